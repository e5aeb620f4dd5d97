"""CloudWatch Logs writing: into moto's backend in this process, or over HTTP to any other."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import boto3
import pytest

from emulator.cloudwatch import LogWriter
from emulator.s3 import S3Server, served_here

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "testing",
         "aws_secret_access_key": "testing"}
STREAM = "2026/12/02/[$LATEST]0123456789abcdef"


@pytest.fixture
def other_moto() -> Iterator[str]:
    """moto's server in a process of its own (not this one's backends)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded wait for it to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto's server did not start")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def read(url: str, group: str) -> list[str]:
    logs = boto3.client("logs", endpoint_url=url, **CREDS)
    events = logs.get_log_events(logGroupName=group, logStreamName=STREAM)["events"]
    return [e["message"] for e in events]


def write(url: str, group: str, lines: list[bytes]) -> LogWriter:
    writer = LogWriter(url)
    for line in lines:
        writer.put(group, STREAM, line)
    assert writer.flush()
    return writer


def test_in_process_server_is_written_directly(s3_server: S3Server) -> None:
    assert served_here(s3_server.url) and served_here(s3_server.url + "/")
    writer = write(s3_server.url, "/aws/lambda/here", [b"one\n", b"two\n", b"\n"])
    assert read(s3_server.url, "/aws/lambda/here") == ["one", "two", " "]
    assert writer.failed == 0 and writer.dropped == 0
    writer.close()


def test_other_server_is_written_over_http(other_moto: str) -> None:
    assert not served_here(other_moto)
    writer = write(other_moto, "/aws/lambda/there", [b"over http\n"])
    assert read(other_moto, "/aws/lambda/there") == ["over http"]
    assert writer.failed == 0
    writer.close()


def test_a_stopped_server_is_no_longer_served_here() -> None:
    server = S3Server()
    server.start()
    url = server.url
    assert served_here(url)
    server.stop()
    assert not served_here(url) and not served_here(None)
