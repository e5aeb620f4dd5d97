"""One contract every launcher backend must meet (STYLE rule 13).

:func:`check_launcher` drives a fresh launcher through the whole :class:`mu.launch.Launcher`
interface: create a function (twice: the second time is an update with the same code), invoke
it N times and get exactly N accepted invocations, fail clearly on an unknown function name,
delete idempotently. :func:`check_site` drives a fresh :class:`mu.launch.Site` through its
interface (credentials, an S3 round trip, the dial-back address, the coordinator's defaults,
close twice) and, for a site that launches, runs the launcher contract on its launcher.
``test_contract.py`` runs them against each backend.
"""

from __future__ import annotations

import io
import ipaddress
import json
import secrets
import zipfile
from collections.abc import Callable

import pytest

from mu.errors import LaunchError
from mu.launch import FunctionSpec, Launcher, LaunchSpec, Site

HANDLER = b"def lambda_handler(event, context):\n    return None\n"


def trivial_zip() -> bytes:
    """A bundle whose handler returns at once (the contract is about launching, not mu)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        info = zipfile.ZipInfo("lambda_function.py", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o100644 << 16
        zf.writestr(info, HANDLER)
    return out.getvalue()


def check_launcher(
    make_launcher: Callable[[], Launcher],
    role: str,
    region: str = "us-east-1",
    count: int = 25,
) -> None:
    """Run the launcher contract.

    Args:
        make_launcher: builds a fresh launcher (closed by this function).
        role: the execution role to deploy with.
        region: where to deploy.
        count: how many invocations to launch.
    """
    launcher = make_launcher()
    try:
        assert isinstance(launcher.name, str) and launcher.name
        name = f"mu_contract_{secrets.token_hex(4)}"
        assert not launcher.function_exists(name, region)

        spec = FunctionSpec(name, trivial_zip(), role=role, memory=256, timeout=30)
        conf = launcher.create_function(spec, region)
        assert conf["FunctionName"] == name
        assert conf["Handler"] == "lambda_function.lambda_handler"
        assert conf["MemorySize"] == 256 and conf["Timeout"] == 30
        assert launcher.function_exists(name, region)
        again = launcher.create_function(spec, region)  # same code: an update, not an error
        assert again["CodeSha256"] == conf["CodeSha256"]

        payload = json.dumps({"mode": 0, "addr": "127.0.0.1", "port": 9, "token": "t"})
        report = launcher.launch(LaunchSpec(name, payload.encode(), count, (region,)))
        assert report.accepted == count and report.failed == 0
        assert sorted(i.index for i in report.invocations) == list(range(count))
        assert {i.region for i in report.invocations} == {region}
        assert report.by_region() == {region: {"accepted": count, "failed": 0, "throttled": 0}}

        missing = f"mu_missing_{secrets.token_hex(4)}"
        with pytest.raises(LaunchError, match=missing):
            launcher.launch(LaunchSpec(missing, b"{}", 3, (region,)))

        launcher.delete_function(name, region)
        launcher.delete_function(name, region)  # idempotent
        assert not launcher.function_exists(name, region)
    finally:
        launcher.close()


def check_site(make_site: Callable[[], Site], role: str | None) -> None:
    """Run the site contract.

    Args:
        make_site: builds a fresh site (closed by this function), with usable credentials.
        role: the execution role for the launcher contract; None for a site that launches
            nothing (its launcher accepts every launch and knows every function).
    """
    site = make_site()
    try:
        assert isinstance(site.name, str) and site.name
        assert site.regions and all(isinstance(r, str) and r for r in site.regions)
        region = site.regions[0]
        assert ipaddress.ip_address(site.listen_host)
        assert isinstance(site.max_handshakes, int) and site.max_handshakes >= 1
        assert isinstance(site.deploys_jobs, bool) and isinstance(site.private, bool)
        assert site.max_zipped is None or site.max_zipped > 0
        assert isinstance(site.default_role, str)
        assert not site.deploys_jobs or site.default_role  # it deploys without being told one
        assert site.check_credentials() == []
        assert site.duplicated() == 0

        s3 = site.s3_client(region)
        bucket = f"mu-contract-{secrets.token_hex(4)}"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="k", Body=b"v")
        listed = s3.list_objects_v2(Bucket=bucket)
        assert [o["Key"] for o in listed["Contents"]] == ["k"]

        address = site.dial_back_address(region)
        assert address is None or ipaddress.ip_address(address)

        if role is None:
            assert site.launcher.function_exists("anything", region)
            report = site.launcher.launch(LaunchSpec("anything", b"{}", 2, (region,)))
            assert report.accepted == 2
        else:
            check_launcher(lambda: site.launcher, role=role, region=region)
    finally:
        site.close()
        site.close()  # harmless the second time
