"""mu.sigv4's pre-signed URLs are botocore's, byte for byte (botocore is the referee).

For fixed times, credentials (with and without a session token), regions, endpoints (ports,
IPv6, upper-case hosts) and query values full of characters that need encoding, the URL
:func:`mu.sigv4.presign_url` makes, and the one :class:`mu.aws.LazyS3` makes from boto3-style
parameters, equal what botocore's ``S3SigV4QueryAuth`` makes of the same request.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, urlencode

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from mu.aws import LazyS3
from mu.sigv4 import presign_url

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
special = st.text("abc/+=&?#% ~-_.*'\"<>é日\u00a0\x7f\x01", max_size=20)
values = st.one_of(text, special)
times = st.datetimes(
    min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2099, 12, 31)
)
regions = st.one_of(
    st.sampled_from(["us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1"]),
    st.from_regex(r"[a-z]{2}-[a-z]{4,9}-[0-9]", fullmatch=True),
)
access_keys = st.from_regex(r"(AKIA|ASIA)[A-Z0-9]{12,16}", fullmatch=True)
secrets = st.one_of(st.from_regex(r"[A-Za-z0-9/+]{40}", fullmatch=True), text)
tokens = st.none() | st.from_regex(r"[A-Za-z0-9/+=]{20,200}", fullmatch=True) | special
hosts = st.sampled_from([
    "127.0.0.1", "localhost", "S3.Amazonaws.COM", "s3.eu-west-1.amazonaws.com", "[::1]",
    "minio.example",
])
ports = st.none() | st.sampled_from([80, 443, 9000]) | st.integers(1, 65535)
endpoints = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}" + ("" if port is None else f":{port}"),
    st.sampled_from(["http", "https"]), hosts, ports,
)
buckets = st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True)


def botocore_presign(
    method: str, url: str, region: str, credentials: tuple[str, str, str | None],
    expires: int, now: datetime.datetime,
) -> str:
    request = AWSRequest(method=method, url=url)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=now):
        botocore.auth.S3SigV4QueryAuth(
            Credentials(*credentials), "s3", region, expires=expires
        ).add_auth(request)
    signed: str = request.prepare().url
    return signed


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "get"]), endpoint=endpoints, bucket=buckets,
    query=st.lists(st.tuples(st.sampled_from(["prefix", "start-after", "list-type",
                                              "max-keys", "x y"]), values),
                   unique_by=lambda kv: kv[0], max_size=4),
    region=regions, access_key=access_keys, secret=secrets, token=tokens,
    expires=st.integers(1, 604800), now=times,
)
def test_presign_url_is_botocores(
    method: str, endpoint: str, bucket: str, query: list[tuple[str, str]], region: str,
    access_key: str, secret: str, token: str | None, expires: int, now: datetime.datetime,
) -> None:
    url = f"{endpoint}/{bucket}" + ("?" + urlencode(query, quote_via=quote) if query else "")
    ours = presign_url(method, url, region=region, access_key=access_key, secret_key=secret,
                       token=token, expires=expires, now=now)
    assert ours == botocore_presign(method, url, region, (access_key, secret, token), expires,
                                    now)


def test_presign_url_takes_aware_times_as_utc() -> None:
    naive = datetime.datetime(2026, 12, 2, 17, 30, 5)
    aware = naive.replace(tzinfo=datetime.timezone.utc).astimezone(
        datetime.timezone(datetime.timedelta(hours=-5)))
    args: dict[str, Any] = {"region": "us-east-1", "access_key": "AKIDEXAMPLE",
                            "secret_key": "secret"}
    url = "http://127.0.0.1:9000/b?list-type=2"
    assert presign_url("GET", url, now=aware, **args) == presign_url("GET", url, now=naive,
                                                                     **args)
    assert "X-Amz-Date=20261202T173005Z" in presign_url("GET", url, now=naive, **args)


def test_the_published_example_signature() -> None:
    """AWS's worked example for a pre-signed GET (sigv4-query-string-auth.html)."""
    url = presign_url(
        "GET", "https://examplebucket.s3.amazonaws.com/test.txt", region="us-east-1",
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", expires=86400,
        now=datetime.datetime(2013, 5, 24, 0, 0, 0),
    )
    assert url.endswith(
        "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")


@settings(max_examples=150, deadline=None)
@given(
    endpoint=endpoints, bucket=buckets, prefix=values, start_after=st.none() | values,
    max_keys=st.integers(1, 1000), region=regions, access_key=access_keys, secret=secrets,
    token=tokens, expires=st.integers(1, 604800), now=times, listing=st.booleans(),
)
def test_lazy_s3_signs_as_botocore_would(
    endpoint: str, bucket: str, prefix: str, start_after: str | None, max_keys: int,
    region: str, access_key: str, secret: str, token: str | None, expires: int,
    now: datetime.datetime, listing: bool,
) -> None:
    """LazyS3's own URLs for the preflight's requests: the request botocore would sign."""
    s3 = LazyS3(lambda: None, endpoint, region, (access_key, secret, token))
    if listing:
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if start_after is not None:
            params["StartAfter"] = start_after
        query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(max_keys))] + (
            [("start-after", start_after)] if start_after is not None else [])
        method, unsigned = "GET", f"{endpoint}/{bucket}?{urlencode(query, quote_via=quote)}"
        client_method = "list_objects_v2"
    else:
        params, method, unsigned = {"Bucket": bucket}, "HEAD", f"{endpoint}/{bucket}"
        client_method = "head_bucket"
    with mock.patch("mu.sigv4.datetime") as fake:
        fake.datetime.now.return_value = now
        fake.timezone = datetime.timezone
        ours = s3.generate_presigned_url(client_method, Params=params, ExpiresIn=expires)
    assert ours == botocore_presign(method, unsigned, region, (access_key, secret, token),
                                    expires, now)


class NoClient:
    """A LazyS3 factory that records being called (the client is not wanted)."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self) -> Any:
        self.made += 1
        return self

    def generate_presigned_url(self, *args: Any, **kwargs: Any) -> str:
        return "from the client"


@pytest.fixture
def clean_aws_env(tmp_path: Path) -> Iterator[None]:
    env = {"HOME": str(tmp_path), "AWS_CONFIG_FILE": str(tmp_path / "config")}
    with mock.patch.dict(os.environ, env, clear=True):
        yield


@pytest.mark.usefixtures("clean_aws_env")
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "us-gov-west-1", "ap-southeast-7"])
def test_without_an_endpoint_the_bucket_is_signed_on_awss_regional_host(region: str) -> None:
    factory = NoClient()
    s3 = LazyS3(factory, None, region, ("AKIDEXAMPLE", "secret", "token"))
    now = datetime.datetime(2026, 12, 2, 18, 0, 0)
    with mock.patch("mu.sigv4.datetime") as fake:
        fake.datetime.now.return_value = now
        ours = s3.generate_presigned_url(
            "list_objects_v2", Params={"Bucket": "frames-01", "Prefix": "v-png16/"})
    unsigned = f"https://frames-01.s3.{region}.amazonaws.com/?list-type=2&prefix=v-png16%2F"
    assert ours == botocore_presign("GET", unsigned, region, ("AKIDEXAMPLE", "secret", "token"),
                                    3600, now)
    assert factory.made == 0


@pytest.mark.usefixtures("clean_aws_env")
@pytest.mark.parametrize(("region", "bucket", "env", "config"), [
    ("eu-west-1", "dotted.bucket", {}, None),
    ("cn-north-1", "frames", {}, None),
    ("us-iso-east-1", "frames", {}, None),
    ("eu-west-1", "frames", {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}, None),
    ("eu-west-1", "frames", {"AWS_USE_FIPS_ENDPOINT": "true"}, None),
    ("eu-west-1", "frames", {"AWS_PROFILE": "p"}, None),
    ("eu-west-1", "frames", {}, "[default]\ns3 =\n  use_accelerate_endpoint = true\n"),
    ("eu-west-1", "frames", {}, "[default]\nendpoint_url = http://127.0.0.1:9\n"),
])
def test_anything_that_may_move_the_endpoint_leaves_the_url_to_the_client(
    tmp_path: Path, region: str, bucket: str, env: dict[str, str], config: str | None
) -> None:
    os.environ.update(env)
    if config is not None:
        (tmp_path / "config").write_text(config)
    factory = NoClient()
    s3 = LazyS3(factory, None, region, ("AKIDEXAMPLE", "secret", None))
    assert s3.generate_presigned_url("head_bucket", Params={"Bucket": bucket}) == (
        "from the client")
    assert factory.made == 1
