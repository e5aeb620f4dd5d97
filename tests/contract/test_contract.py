"""The launcher contract, run against every backend that works on a laptop.

- ``lambda`` against moto's Lambda in server mode over HTTP. moto runs function code in
  Docker; with ``use_docker`` off it uses its Docker-less Lambda model, which accepts Event
  invokes (202) without running anything, which is all the contract needs.
- ``local``: the emulator and its moto S3 on loopback, through ``backends.local``.

Each backend's :class:`mu.launch.Site` meets :func:`check_site` too; ``none`` launches
nothing, so it meets only the site part (its S3 is moto's here).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from backends import get_backend
from mu.options import SiteOptions
from tests.contract.launcher_contract import check_launcher, check_site


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _set_moto_config(url: str, config: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"{url}/moto-api/config", data=json.dumps(config).encode(), method="POST"
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 201


@pytest.fixture
def moto_url(aws_env: None) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        _set_moto_config(url, {"lambda": {"use_docker": False}})
        try:
            yield url
        finally:
            _set_moto_config(url, {"lambda": {"use_docker": True}})
    finally:
        server.stop()


def test_lambda_backend_against_moto(moto_url: str) -> None:
    iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1")
    role = iam.create_role(RoleName="mu-contract", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    iam.close()
    check_launcher(
        lambda: get_backend("lambda", SiteOptions(endpoint_url=moto_url)).launcher, role=role
    )


def test_local_backend(aws_env: None) -> None:
    pytest.importorskip("emulator.server", reason="the emulator package is not there yet")
    check_launcher(lambda: get_backend("local").launcher, role=LOCAL_ROLE)


LOCAL_ROLE = "arn:aws:iam::000000000000:role/mu-local"


def test_lambda_site_against_moto(moto_url: str) -> None:
    iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1")
    role = iam.create_role(RoleName="mu-site", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    iam.close()
    options = SiteOptions(backend="lambda", endpoint_url=moto_url, s3_endpoint_url=moto_url)
    check_site(lambda: get_backend("lambda", options), role=role)


def test_local_site(aws_env: None) -> None:
    pytest.importorskip("emulator.server", reason="the emulator package is not there yet")
    check_site(lambda: get_backend("local"), role=LOCAL_ROLE)


def test_none_site(moto_url: str) -> None:
    options = SiteOptions(backend="none", s3_endpoint_url=moto_url)
    check_site(lambda: get_backend("none", options), role=None)
