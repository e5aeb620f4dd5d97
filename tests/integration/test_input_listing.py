"""The preflight lists only the input keys a run needs, against a real moto S3 over HTTP.

``missing_inputs`` must name exactly the needed frames the bucket lacks, for any set of
chunks (``-n``/``-o`` ranges and sparse ``-N`` lists), while ``keys_under`` reads no more
than a page beyond the range it is asked for. When the fast pre-signed path cannot be used
(here: its URL points at a closed port), boto3's paginator gives the same answer. The run's
lazy S3 client signs the preflight's requests itself and makes no boto3 client for them.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.local import LOCAL_CREDENTIALS
from emulator.s3 import S3Server
from mu.apps.png2y4m import (
    Png2Y4MConfig,
    _runs,
    bucket_exists,
    keys_under,
    missing_inputs,
    preflight_inputs,
)
from mu.aws import LazyS3

FRAMES = 60
ABSENT = {7, 20, 21, 55}
CFG = Png2Y4MConfig(video="list", bucket="listing", informat="png16", frames=3)


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> Any:
    client = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                          **LOCAL_CREDENTIALS)
    client.create_bucket(Bucket=CFG.bucket)
    for frame in range(1, FRAMES + 1):
        if frame not in ABSENT:
            client.put_object(Bucket=CFG.bucket, Key=CFG.input_key(frame), Body=b"x")
    # Keys beside the inputs that a listing of the inputs must not be confused by.
    client.put_object(Bucket=CFG.bucket, Key="list-png16.txt", Body=b"x")
    client.put_object(Bucket=CFG.bucket, Key="list-y4m_03/00000000.y4m", Body=b"x")
    return client


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, FRAMES // 3 + 2), min_size=1, max_size=8, unique=True))
def test_missing_inputs_names_exactly_the_needed_absent_frames(s3: Any, chunks: list[int]) -> None:
    needed = [f for c in chunks for f in CFG.frames_of(c)]
    expected = [CFG.input_key(f) for f in needed if f in ABSENT or f > FRAMES]
    assert missing_inputs(s3, CFG, chunks) == expected


def test_a_range_reads_at_most_a_page_beyond_it(s3: Any) -> None:
    first, last = CFG.input_key(30), CFG.input_key(33)
    found = keys_under(s3, CFG.bucket, CFG.input_prefix, first, last, page_size=3)
    assert {CFG.input_key(f) for f in range(30, 34)} <= found
    assert len(found) <= 4 + 3
    assert all(first <= key for key in found)


class ClosedPresign:
    """A real S3 client whose pre-signed URLs point at a port nobody listens on."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.meta = client.meta  # the endpoint, for error messages
        with socket.socket() as probe:  # bound and closed again: connections are refused
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    def generate_presigned_url(self, *args: Any, **kwargs: Any) -> str:
        return f"http://127.0.0.1:{self.port}/listing"

    def get_paginator(self, name: str) -> Any:
        return self.client.get_paginator(name)


def test_without_the_fast_path_the_paginator_gives_the_same_keys(s3: Any) -> None:
    first, last = CFG.input_key(1), CFG.input_key(FRAMES)
    fast = keys_under(s3, CFG.bucket, CFG.input_prefix, first, last, page_size=7)
    slow = keys_under(ClosedPresign(s3), CFG.bucket, CFG.input_prefix, first, last, page_size=7)
    assert fast == slow == {CFG.input_key(f) for f in range(1, FRAMES + 1) if f not in ABSENT}
    assert missing_inputs(ClosedPresign(s3), CFG, [2, 6]) == [CFG.input_key(7)] + [
        CFG.input_key(f) for f in (20, 21)]


@given(st.lists(st.integers(0, 40), max_size=30))
def test_runs_cover_the_numbers_in_maximal_consecutive_runs(numbers: list[int]) -> None:
    runs = _runs(numbers)
    covered = [n for lo, hi in runs for n in range(lo, hi + 1)]
    assert covered == sorted(set(numbers))
    assert all(hi + 1 < lo for (_, hi), (lo, _) in itertools.pairwise(runs))


def test_the_preflight_signs_its_requests_without_making_a_boto3_client(
    s3: Any, s3_server: S3Server
) -> None:
    made: list[Any] = []

    def factory() -> Any:
        made.append(s3)
        return s3

    lazy = LazyS3(factory, s3_server.url, "us-east-1", ("testing", "testing", None))
    assert preflight_inputs(lazy, CFG, [2, 6, 18]) == preflight_inputs(s3, CFG, [2, 6, 18])
    assert "4 of the 9 input frames are missing" in preflight_inputs(lazy, CFG, [2, 6, 18])[0]
    assert made == []
    assert bucket_exists(lazy, "no-such-bucket") is False  # answered by the client, made now
    assert made == [s3]


def test_lazily_signed_listings_quote_keys_as_boto3_does(s3: Any, s3_server: S3Server) -> None:
    odd = ["odd/a b+c", "odd/é~(1)", "odd/x&y=z?", "odd/zz"]
    for key in odd:
        s3.put_object(Bucket=CFG.bucket, Key=key, Body=b"x")
    lazy = LazyS3(lambda: s3, s3_server.url, "us-east-1", ("testing", "testing", None))
    for first in odd:
        assert keys_under(lazy, CFG.bucket, "odd/", first, page_size=2) == {
            k for k in odd if k.encode() >= first.encode()}
    assert lazy._client is None


def test_lazily_signed_requests_with_a_session_token_read_hostile_keys(
    s3: Any, s3_server: S3Server
) -> None:
    """Temporary credentials (a token full of characters to encode), another region, and
    keys that S3 escapes in its XML: the stdlib signer's URLs and parser get them all."""
    hostile = ["hostile/<a>&b", "hostile/\"q\" 'a'", "hostile/tab\there", "hostile/日本 ~*"]
    for key in hostile:
        s3.put_object(Bucket=CFG.bucket, Key=key, Body=b"x")
    lazy = LazyS3(lambda: s3, s3_server.url, "eu-west-1",
                  ("ASIAEXAMPLEEXAMPLE", "secret/+=key", "token/with+and=and%"))
    assert bucket_exists(lazy, CFG.bucket) is True
    assert keys_under(lazy, CFG.bucket, "hostile/", page_size=2) == set(hostile)
    assert lazy._client is None
