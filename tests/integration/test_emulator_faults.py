"""Rehearsal faults in the emulator: Event invocations delivered twice, as AWS may."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from emulator.s3 import S3Server
from emulator.server import ThreadedEmulatorServer
from tests.integration.test_emulator import CREDS, ROLE, bundle

COUNTING = b'''
import os, time, boto3
def handler(event, context):
    boto3.client("s3").put_object(Bucket=event["bucket"],
        Key="%s/%d-%d" % (event["key"], os.getpid(), time.time_ns()), Body=b"")
'''


_calls = iter(range(1000))


def deliveries(s3_server: S3Server, tmp_path: Path, rate: float, seed: int, events: int
               ) -> tuple[list[int], int]:
    """Fire ``events`` Event invocations; return the runs each got, and the count the
    emulator says it duplicated."""
    call = next(_calls)
    server = ThreadedEmulatorServer(state_dir=tmp_path / f"state{call}",
                                    s3_endpoint_url=s3_server.url, duplicate_rate=rate,
                                    duplicate_seed=seed)
    server.start()
    try:
        lam = boto3.client("lambda", endpoint_url=server.url, **CREDS)
        s3 = boto3.client("s3", endpoint_url=s3_server.url, **CREDS)
        bucket = "dup-bucket"
        if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            s3.create_bucket(Bucket=bucket)
        name = f"count{call}"
        lam.create_function(FunctionName=name, Runtime="python3.12", Role=ROLE,
                            Handler="handler.handler", MemorySize=512, Timeout=120,
                            Code={"ZipFile": bundle(COUNTING)})
        # Count deliveries only: a run that failed on a loaded machine is not retried.
        lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
        for i in range(events):
            answer = lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(
                {"bucket": bucket, "key": f"{name}/{i}"}).encode())
            assert answer["StatusCode"] == 202
        assert server.registry.wait_idle(120)
        runs = []
        for i in range(events):
            found: Any = s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/{i}/")
            runs.append(found.get("KeyCount", 0))
        return runs, server.registry.duplicated
    finally:
        server.stop()


def test_every_event_is_delivered_twice_at_rate_one(s3_server: S3Server, tmp_path: Path) -> None:
    runs, duplicated = deliveries(s3_server, tmp_path, 1.0, 0, 5)
    assert runs == [2] * 5
    assert duplicated == 5


def test_duplicates_follow_the_seed(s3_server: S3Server, tmp_path: Path) -> None:
    first, count = deliveries(s3_server, tmp_path, 0.5, 7, 12)
    again, count_again = deliveries(s3_server, tmp_path, 0.5, 7, 12)
    assert first == again
    assert count == count_again == first.count(2)
    assert set(first) <= {1, 2} and 0 < count < 12


def test_no_duplicates_by_default(s3_server: S3Server, tmp_path: Path) -> None:
    runs, duplicated = deliveries(s3_server, tmp_path, 0.0, 0, 4)
    assert runs == [1] * 4 and duplicated == 0


def test_bad_rate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate rate must be in"):
        ThreadedEmulatorServer(state_dir=tmp_path, duplicate_rate=1.5)
