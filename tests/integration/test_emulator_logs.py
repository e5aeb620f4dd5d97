"""CloudWatch Logs writing: into moto's backend in this process, or over HTTP to any other;
and the framing of a function's log file (``STATE_DIR/logs/FUNCTION.log``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.cloudwatch import LogWriter
from emulator.runner import invocation_logs, log_record
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


REQUEST_IDS = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)),
                      min_size=1, max_size=40)
RECORDS = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]) | REQUEST_IDS,
                             st.binary(min_size=1, max_size=300)), max_size=12)


@given(records=RECORDS, cut=st.integers(min_value=0), one=st.booleans())
def test_log_file_records_read_back(
    tmp_path_factory: pytest.TempPathFactory, records: list[tuple[str, bytes]], cut: int,
    one: bool,
) -> None:
    """Whatever the logs hold (record lines included), each request's attempts come back
    joined, requests in the order their last attempt ended; a record cut short (being
    written) is left out, and nothing after it is made up."""
    data = [log_record(request_id, log) for request_id, log in records]
    whole = b"".join(data)
    cut = cut % (len(whole) + 1)
    path = Path(tmp_path_factory.mktemp("logs")) / "f.log"
    path.write_bytes(whole[:cut])
    expected: dict[str, list[bytes]] = {}
    at = 0
    for record, (request_id, log) in zip(data, records, strict=True):
        at += len(record)
        if at > cut:
            break
        expected.setdefault(request_id, []).append(log)
        expected[request_id] = expected.pop(request_id)
    wanted = records[0][0] if one and records else None
    got = invocation_logs(path, wanted)
    if wanted is None:
        assert got == [b"".join(logs) for logs in expected.values()]
    else:
        assert got == ([b"".join(expected[wanted])] if wanted in expected else [])


def test_no_log_file_reads_as_no_logs(tmp_path: Path) -> None:
    assert invocation_logs(tmp_path / "absent.log") == []
