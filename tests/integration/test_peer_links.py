"""Named peer links (``link``/``send``/``recv``/``close_link``): the file framing they carry,
by property, and a real worker session (over TLS, driven by a scripted coordinator of
:mod:`tests.worker_helpers`) refusing links it cannot open.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mu.errors import RemoteProtocolError
from mu.protocol import (
    EXPECT,
    NEED_DATA,
    FrameDecoder,
    encode_frame,
    expected_response,
)
from mu.tls import KeySet
from mu.worker.peer import (
    FILE_FRAME,
    FileAssembler,
    FileData,
    FileDone,
    FileStarted,
    file_frames,
)
from tests.worker_helpers import Conn, WorkerThread, connected_worker


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- file framing


def join_files(frames: list[bytes], chunking: list[int]) -> list[tuple[bytes, str]]:
    """Put ``frames`` on a byte stream, cut it as ``chunking`` says, and reassemble files."""
    stream = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder(FILE_FRAME)
    assembler = FileAssembler()
    files: list[tuple[bytes, str]] = []
    current = bytearray()
    pos = 0
    cuts = iter(chunking)
    while pos < len(stream):
        step = max(1, next(cuts, len(stream)))
        decoder.receive_data(stream[pos : pos + step])
        pos += step
        while (frame := decoder.next_frame()) is not NEED_DATA:
            assert isinstance(frame, bytes)
            for event in assembler.feed(frame):
                if isinstance(event, FileStarted):
                    current = bytearray()
                elif isinstance(event, FileData):
                    current += event.data
                else:
                    assert event.size == len(current)
                    files.append((bytes(current), event.sha256))
    assert assembler.idle
    return files


def split_file(data: bytes, frame_size: int) -> list[bytes]:
    return list(file_frames(io.BytesIO(data).read, len(data), sha(data), frame_size))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=3000), max_size=4),
    st.integers(min_value=1, max_value=700),
    st.lists(st.integers(min_value=1, max_value=900), max_size=40),
)
def test_file_framing_splits_and_joins_any_bytes(
    files: list[bytes], frame_size: int, chunking: list[int]
) -> None:
    frames: list[bytes] = []
    for data in files:
        split = split_file(data, frame_size)
        assert split[0] == b"FILE:%d:%s" % (len(data), sha(data).encode())
        assert all(1 <= len(f) <= frame_size for f in split[1:])
        assert b"".join(split[1:]) == data
        frames += split
    assert join_files(frames, chunking) == [(data, sha(data)) for data in files]


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=2000),
    st.integers(min_value=1, max_value=500),
    st.data(),
)
def test_file_framing_refuses_changed_bytes(data: bytes, frame_size: int, draw: Any) -> None:
    frames = split_file(data, frame_size)
    where = draw.draw(st.integers(min_value=0, max_value=len(data) - 1))
    flipped = bytearray(data)
    flipped[where] ^= 0xFF
    with pytest.raises(RemoteProtocolError, match="SHA-256"):
        join_files([frames[0], *split_file(bytes(flipped), frame_size)[1:]], [])
    with pytest.raises(RemoteProtocolError, match="more than the"):
        join_files([*frames[:-1], frames[-1] + b"x"], [])
    with pytest.raises(RemoteProtocolError, match="expected a FILE"):
        join_files([*frames, b"x"], [])


@pytest.mark.parametrize(
    "header",
    [b"FILE:1:abc", b"FILE:-1:" + b"0" * 64, b"FILE:01:" + b"0" * 64, b"hello",
     b"FILE:1:" + b"A" * 64],
)
def test_file_framing_refuses_malformed_headers(header: bytes) -> None:
    assembler = FileAssembler(peer="link left")
    with pytest.raises(RemoteProtocolError, match=r"expected a FILE:<size>:<sha256> .* link left"):
        assembler.feed(header)
    with pytest.raises(RemoteProtocolError):  # poisoned
        assembler.feed(b"FILE:0:" + sha(b"").encode())


def test_an_empty_file_is_its_header() -> None:
    assert split_file(b"", 10) == [b"FILE:0:" + sha(b"").encode()]
    assert FileAssembler().feed(split_file(b"", 10)[0]) == [
        FileStarted(0, sha(b"")),
        FileDone(0, sha(b"")),
    ]


def test_expected_responses_cover_both_modes() -> None:
    assert expected_response("link:a:1:2") == "OK:LINK"
    assert expected_response("close_link:a") == "OK:CLOSE_LINK"
    for command, answers in {
        "send": ("OK:SEND(a:1:x)", "OK:SENDING(a)"),
        "recv": ("OK:RECV(a:1:x)", "OK:RECEIVING(a)"),
    }.items():
        prefix = EXPECT[command]
        assert prefix is not None and all(a.startswith(prefix) for a in answers)


# --------------------------------------------------------------------------- worker sessions


def quit_and_join(conn: Conn, worker: WorkerThread) -> None:
    conn.send("quit:")
    conn.recv_eof()
    summary = worker.join()
    assert summary["exit"] == "quit", summary
    assert not os.path.exists(summary["tmpdir"])


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
    return port


def test_link_to_a_missing_relay_and_without_one(keys: KeySet) -> None:
    port = free_port()
    with connected_worker(keys) as (conn, worker):
        assert conn.ask(f"link:x:127.0.0.1:{port}:1:2") == (
            f"FAIL(link: cannot open x to the relay at 127.0.0.1:{port}: Connection refused)"
        )
        assert conn.ask("link:x:1:2") == (
            "FAIL(link: this invocation's payload names no relay; "
            "use link:NAME:host:port:me:partner)"
        )
        assert conn.ask("send:x:f") == "FAIL(send: no link named x)"
        quit_and_join(conn, worker)
    with connected_worker(keys, relay=f"127.0.0.1:{port}") as (conn, worker):
        assert conn.ask("link:x:1:2") == (
            f"FAIL(link: cannot open x to the relay at 127.0.0.1:{port}: Connection refused)"
        )
        quit_and_join(conn, worker)
    with connected_worker(keys, relay="nowhere") as (conn, worker):
        assert conn.ask("link:x:1:2") == (
            "FAIL(link: the payload's relay 'nowhere' is not host:port)"
        )
        quit_and_join(conn, worker)
