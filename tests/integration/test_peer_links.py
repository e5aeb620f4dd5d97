"""Named peer links (``link``/``send``/``recv``/``close_link``) between real worker sessions
through the real relay (:class:`mu.relay.Relay`), over mutual TLS; and the file framing they
carry, by property.

Each worker is :func:`mu.worker.session.run` in a thread, driven by a scripted coordinator of
its own (:mod:`tests.worker_helpers`). The test writes the files to send into a worker's
private directory (found with ``run:printf ##TMPDIR##``) and reads received files from there.
Waits are bounded; nothing sleeps.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mu.errors import RemoteProtocolError
from mu.protocol import (
    EXPECT,
    NEED_DATA,
    FrameDecoder,
    Retval,
    encode_frame,
    encode_text,
    expected_response,
)
from mu.relay import Relay, RelayLimits
from mu.tls import KeySet
from mu.worker.peer import (
    FILE_FRAME,
    FileAssembler,
    FileData,
    FileDone,
    FileStarted,
    file_frames,
)
from mu.worker.session import client_context
from tests.worker_helpers import WAIT, Conn, WorkerThread, connected_worker, event_for

TOKEN = "t0k3n"  # event_for's run token


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def relay(keys: KeySet) -> Iterator[Relay]:
    """The run's relay on 127.0.0.1:0, with TLS against the run's CA and the run token."""
    with Relay(keys, TOKEN) as server:
        yield server


def relay_field(relay: Relay) -> str:
    host, port = relay.address
    return f"{host}:{port}"


@contextmanager
def workers(keys: KeySet | None, relay: Relay, count: int, **fields: Any) -> Iterator[list[Conn]]:
    """``count`` workers, each with its own coordinator, the payload naming ``relay``."""
    with ExitStack() as stack:
        conns = []
        for _ in range(count):
            conn, worker = stack.enter_context(
                connected_worker(keys, relay=relay_field(relay), **fields)
            )
            stack.callback(quit_and_join, conn, worker)
            conns.append(conn)
        yield conns


def quit_and_join(conn: Conn, worker: WorkerThread) -> None:
    conn.send("quit:")
    conn.recv_eof()
    summary = worker.join()
    assert summary["exit"] == "quit", summary
    assert not os.path.exists(summary["tmpdir"])


def tmpdir_of(conn: Conn) -> Path:
    """The worker's private directory (in either mode)."""
    answer = conn.ask("run:printf %s ##TMPDIR##")
    if answer.startswith("OK:RUNNING("):
        answer = conn.recv()
    retval = Retval.parse(answer)
    assert retval is not None and retval.status == 0
    return Path(retval.output)


def collect(conn: Conn, finals: int) -> list[str]:
    """Messages until ``finals`` final answers (OK or FAIL, not the nonblock acks) came."""
    messages: list[str] = []
    done = 0
    while done < finals:
        message = conn.recv()
        messages.append(message)
        if message.startswith("FAIL") or (
            message.startswith("OK") and not message.startswith(("OK:SENDING(", "OK:RECEIVING("))
        ):
            done += 1
    return messages


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(seed: int, size: int) -> bytes:
    """``size`` reproducible bytes, different per seed."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


def raw_peer(keys: KeySet, relay: Relay, tmp_path: Path, me: int, partner: int) -> ssl.SSLSocket:
    """A hand-driven client of the relay with the run's worker certificate, past its hello."""
    tls_dir = tmp_path / f"peer-{me}"
    tls_dir.mkdir()
    context = client_context(event_for(keys, 1), str(tls_dir))
    assert context is not None
    sock = context.wrap_socket(socket.create_connection(relay.address, timeout=WAIT))
    sock.sendall(encode_text(f"HELLO_STATE:{TOKEN}:{me}:{partner}"))
    return sock


def link_threads() -> set[threading.Thread]:
    """The link threads alive in this process (every worker here runs in it)."""
    return {t for t in threading.enumerate() if t.name == "mu-links"}


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
    return port


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


# --------------------------------------------------------------------------- over the relay


@pytest.mark.parametrize("nonblock", [0, 1])
def test_three_workers_swap_files_both_ways_at_once(
    keys: KeySet, relay: Relay, nonblock: int
) -> None:
    """Worker i holds ``left`` (me 2i, partner 2i-1) and ``right`` (me 2i+1, partner 2i+2):
    each sends a file of several frames both ways and receives its neighbours' at once."""
    with workers(keys, relay, 3, nonblock=nonblock) as conns:
        dirs = [tmpdir_of(conn) for conn in conns]
        sides = {
            i: [s for s in ("left", "right") if (s, i) not in (("left", 0), ("right", 2))]
            for i in range(3)
        }
        data = {}
        for i, conn in enumerate(conns):
            for side in sides[i]:
                me = 2 * i if side == "left" else 2 * i + 1
                partner = me - 1 if side == "left" else me + 1
                assert conn.ask(f"link:{side}:{me}:{partner}") == f"OK:LINK({side})"
                data[i, side] = blob(10 * i + len(side), 2 * FILE_FRAME + 1000 * i + 7)
                (dirs[i] / f"out-{side}").write_bytes(data[i, side])
        for i, conn in enumerate(conns):  # everything is in flight before any answer is read
            for side in sides[i]:
                conn.send(f"send:{side}:out-{side}")
            for side in sides[i]:
                conn.send(f"recv:{side}:in-{side}")
        for i, conn in enumerate(conns):
            messages = collect(conn, 2 * len(sides[i]))
            expected = set()
            for side in sides[i]:
                sent = data[i, side]
                got = data[i - 1, "right"] if side == "left" else data[i + 1, "left"]
                expected |= {
                    f"OK:SEND({side}:{len(sent)}:{sha(sent)})",
                    f"OK:RECV({side}:{len(got)}:{sha(got)})",
                    f"INFO:file:{side}:{len(got)}:{sha(got)}",
                }
                if nonblock:
                    expected |= {f"OK:SENDING({side})", f"OK:RECEIVING({side})"}
                assert (dirs[i] / f"in-{side}").read_bytes() == got
            # an INFO:file not yet read is one whose OK:RECV is not either
            assert set(messages) == expected, (i, messages)
            for side in sides[i]:
                assert conn.ask(f"close_link:{side}") == f"OK:CLOSE_LINK({side})"


def test_recv_before_and_after_the_arrival(keys: KeySet, relay: Relay) -> None:
    with workers(keys, relay, 2) as (a, b):
        a_dir = tmpdir_of(a)
        assert a.ask("link:right:1:2") == "OK:LINK(right)"
        assert b.ask(f"link:left:{2}:{1}") == "OK:LINK(left)"
        first, second = b"first file", blob(1, 5000)
        (a_dir / "one").write_bytes(first)
        (a_dir / "two").write_bytes(second)
        # before: b waits (nonblock) and is answered when the file comes
        assert b.ask("seti:nonblock:1") == "OK:SETI(nonblock)"
        assert b.ask("recv:left:got1") == "OK:RECEIVING(left)"
        assert a.ask("send:right:one") == f"OK:SEND(right:{len(first)}:{sha(first)})"
        assert b.recv() == f"INFO:file:left:{len(first)}:{sha(first)}"
        assert b.recv() == f"OK:RECV(left:{len(first)}:{sha(first)})"
        # after: the file is there (told by INFO) before b asks for it, blocking
        assert a.ask("send:right:two") == f"OK:SEND(right:{len(second)}:{sha(second)})"
        assert b.recv() == f"INFO:file:left:{len(second)}:{sha(second)}"
        assert b.ask("seti:nonblock:0") == "OK:SETI(nonblock)"
        assert b.ask("recv:left:sub/../got2") == f"OK:RECV(left:{len(second)}:{sha(second)})"
        b_dir = tmpdir_of(b)
        assert (b_dir / "got1").read_bytes() == first
        assert (b_dir / "got2").read_bytes() == second
        # the spool holds nothing more; a target in a missing folder keeps the file queued
        assert b.ask("set:recv_timeout:0") == "OK:SET(recv_timeout)"
        assert b.ask("recv:left:got3") == "FAIL(recv left: no file within 0 s)"
        assert a.ask("send:right:one") == f"OK:SEND(right:{len(first)}:{sha(first)})"
        assert b.recv().startswith("INFO:file:left:")
        assert b.ask("recv:left:no/such/dir/x") == (
            f"FAIL(recv left: cannot write {b_dir}/no/such/dir/x: No such file or directory)"
        )
        assert b.ask("recv:left:got3") == f"OK:RECV(left:{len(first)}:{sha(first)})"


def test_files_of_many_frames_arrive_whole_through_reused_buffers(
    keys: KeySet, relay: Relay
) -> None:
    """A file of more frames than a send has buffers, sent twice in a row, then a different
    one: the sender reads each buffer again only once it is written, the receiver takes each
    frame out of its one reused buffer; every byte arrives as sent."""
    with workers(keys, relay, 2) as (a, b):
        a_dir, b_dir = tmpdir_of(a), tmpdir_of(b)
        assert a.ask("link:right:31:32") == "OK:LINK(right)"
        assert b.ask("link:left:32:31") == "OK:LINK(left)"
        files = [blob(3, 7 * FILE_FRAME + 12345), blob(4, 5 * FILE_FRAME)]
        for n, data in enumerate(files):
            (a_dir / f"f{n}").write_bytes(data)
        for n in (0, 0, 1):
            data = files[n]
            assert a.ask(f"send:right:f{n}") == f"OK:SEND(right:{len(data)}:{sha(data)})"
        for n in (0, 0, 1):
            assert b.recv() == f"INFO:file:left:{len(files[n])}:{sha(files[n])}"
        for k, n in enumerate((0, 0, 1)):
            data = files[n]
            assert b.ask(f"recv:left:g{k}") == f"OK:RECV(left:{len(data)}:{sha(data)})"
            assert (b_dir / f"g{k}").read_bytes() == data


def test_files_come_in_order_and_close_link_ends_a_waiting_recv(
    keys: KeySet, relay: Relay
) -> None:
    with workers(keys, relay, 2) as (a, b):
        a_dir, b_dir = tmpdir_of(a), tmpdir_of(b)
        assert a.ask("link:right:21:22") == "OK:LINK(right)"
        assert b.ask("link:left:22:21") == "OK:LINK(left)"
        files = [blob(n, 100 * n) for n in range(4)]
        for n, data in enumerate(files):
            (a_dir / f"f{n}").write_bytes(data)
            assert a.ask(f"send:right:f{n}") == f"OK:SEND(right:{len(data)}:{sha(data)})"
        for data in files:
            assert b.recv() == f"INFO:file:left:{len(data)}:{sha(data)}"
        for n, data in enumerate(files[:3]):
            assert b.ask(f"recv:left:g{n}") == f"OK:RECV(left:{len(data)}:{sha(data)})"
            assert (b_dir / f"g{n}").read_bytes() == data
        assert b.ask("close_link:left") == "OK:CLOSE_LINK(left)"  # f3 is dropped, no INFO
        assert not (b_dir / ".links").exists() or not any((b_dir / ".links").rglob("*"))
        assert b.ask("link:left:24:23") == "OK:LINK(left)"
        assert b.ask("seti:nonblock:1") == "OK:SETI(nonblock)"
        assert b.ask("recv:left:g3") == "OK:RECEIVING(left)"
        assert b.ask("close_link:left") == "OK:CLOSE_LINK(left)"
        assert b.recv() == "FAIL(recv left: link closed: closed by close_link)"
        assert b.ask("echo:nothing else") == "OK:ECHO(nothing else)"


def test_links_over_plain_tcp_in_a_no_tls_run() -> None:
    with Relay(None, TOKEN) as plain, workers(None, plain, 2) as (a, b):
        (tmpdir_of(a) / "f").write_bytes(b"no tls")
        assert a.ask("link:right:1:2") == "OK:LINK(right)"
        assert b.ask("link:left:2:1") == "OK:LINK(left)"
        assert a.ask("send:right:f") == f"OK:SEND(right:6:{sha(b'no tls')})"
        assert b.recv() == f"INFO:file:left:6:{sha(b'no tls')}"
        assert b.ask("recv:left:g") == f"OK:RECV(left:6:{sha(b'no tls')})"
        assert (tmpdir_of(b) / "g").read_bytes() == b"no tls"


def test_recv_timeout(keys: KeySet, relay: Relay) -> None:
    with workers(keys, relay, 1) as (a,):
        assert a.ask("link:left:2:1") == "OK:LINK(left)"
        assert a.ask("set:recv_timeout:0.2") == "OK:SET(recv_timeout)"
        assert a.ask("recv:left:x") == "FAIL(recv left: no file within 0.2 s)"
        assert a.ask("seti:recv_timeout:0") == "OK:SETI(recv_timeout)"
        assert a.ask("recv:left:x") == "FAIL(recv left: no file within 0 s)"
        assert a.ask("seti:nonblock:1") == "OK:SETI(nonblock)"
        assert a.ask("recv:left:x") == "OK:RECEIVING(left)"
        assert a.recv() == "FAIL(recv left: no file within 0 s)"
        for bad in ("soon", "-1", "inf", "nan"):
            assert a.ask(f"set:recv_timeout:{bad}") == "OK:SET(recv_timeout)"
            assert a.ask("recv:left:x") == (
                f"FAIL(recv: recv_timeout '{bad}' is not a number of seconds >= 0)"
            )


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


def test_malformed_commands_and_unknown_links(keys: KeySet, relay: Relay) -> None:
    with workers(keys, relay, 1) as (a,):
        cases = {
            "link:x": "FAIL(link: expected link:NAME:me:partner or link:NAME:host:port:me:partner, "
            "got link:x)",
            "link:x:1:two": "FAIL(link: partner 'two' is not a decimal number)",
            "link:x:-1:2": "FAIL(link: me '-1' is not a decimal number)",
            "link:x:h:0:1:2": "FAIL(link: port 0 is out of range 1-65535)",
            "link:a/b:1:2": "FAIL(link: bad link name 'a/b' (1-64 of A-Z a-z 0-9 _ . -))",
            "send:nope:f": "FAIL(send: no link named nope)",
            "recv:nope:f": "FAIL(recv: no link named nope)",
            "close_link:nope": "FAIL(close_link: no link named nope)",
            "send:nope": "FAIL(send: expected send:NAME:path, got send:nope)",
            "recv:": "FAIL(recv: expected recv:NAME:path, got recv:)",
            "close_link:": "FAIL(close_link: expected close_link:NAME, got close_link:)",
        }
        for command, answer in cases.items():
            assert a.ask(command) == answer
        assert a.ask("link:x:1:2") == "OK:LINK(x)"
        assert a.ask("link:x:3:4") == "FAIL(link: a link named x is already open)"
        assert a.ask("close_link:x") == "OK:CLOSE_LINK(x)"
        assert a.ask("recv:x:f") == "FAIL(recv: no link named x)"
        assert a.ask("link:x:5:6") == "OK:LINK(x)"  # the name is free again


def test_paths_outside_the_private_directory(keys: KeySet, relay: Relay) -> None:
    with workers(keys, relay, 1) as (a,):
        a_dir = tmpdir_of(a)
        assert a.ask("link:x:1:2") == "OK:LINK(x)"
        send = a.ask("send:x:../../etc/passwd")
        assert send == (
            "FAIL(send: file '../../etc/passwd' resolves to /etc/passwd, outside the worker's "
            f"private directory {a_dir} or the function's directory {os.getcwd()} (read only))"
        )
        assert a.ask("recv:x:/tmp/stolen") == (
            "FAIL(recv: file '/tmp/stolen' resolves to /tmp/stolen, outside the worker's "
            f"private directory {a_dir})"
        )
        assert a.ask("send:x:absent") == (
            f"FAIL(send x: cannot read {a_dir}/absent: No such file or directory)"
        )


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (
            [b"FILE:5:" + sha(b"other").encode(), b"hello"],
            "file 2 (5 bytes) has SHA-256 " + sha(b"hello") + ", its header announced "
            + sha(b"other"),
        ),
        (
            [b"FILE:3:" + sha(b"abc").encode(), b"abcde"],
            "file 2 carries more than the 3 bytes announced (5 so far)",
        ),
        ([b"hello"], "expected a FILE:<size>:<sha256> frame, got b'hello'"),
    ],
    ids=["sha", "size", "header"],
)
def test_a_bad_file_ends_the_link(
    keys: KeySet, relay: Relay, tmp_path: Path, frames: list[bytes], reason: str
) -> None:
    good = b"a good file first"
    with workers(keys, relay, 1, nonblock=1) as (a,):
        assert a.ask("link:left:2:1") == "OK:LINK(left)"
        with raw_peer(keys, relay, tmp_path, 1, 2) as peer:
            peer.sendall(b"".join(encode_frame(f) for f in split_file(good, 5)))
            assert a.recv() == f"INFO:file:left:{len(good)}:{sha(good)}"
            assert a.ask("recv:left:got") == "OK:RECEIVING(left)"
            assert a.recv() == f"OK:RECV(left:{len(good)}:{sha(good)})"
            assert a.ask("recv:left:bad") == "OK:RECEIVING(left)"  # pending when it breaks
            peer.sendall(b"".join(encode_frame(f) for f in frames))
            closed = a.recv()
            where = f" from link left (relay {relay_field(relay)})"
            assert closed == f"INFO:link_closed:left:{reason}{where}"
            assert a.recv() == f"FAIL(recv left: link closed: {reason}{where})"
        assert a.ask("recv:left:bad") == "OK:RECEIVING(left)"
        assert a.recv() == f"FAIL(recv left: link closed: {reason}{where})"
        assert a.ask("send:left:got") == "OK:SENDING(left)"
        assert a.recv() == f"FAIL(send left: link closed: {reason}{where})"
        a_dir = tmpdir_of(a)
        assert (a_dir / "got").read_bytes() == good
        assert not (a_dir / "bad").exists()


def test_the_relays_fail_ends_the_link_with_its_reason(keys: KeySet, tmp_path: Path) -> None:
    """A relay of another run refuses the hello: its FAIL text is the link's end reason."""
    with Relay(keys, "another-run") as other, workers(keys, other, 1) as (a,):
        assert a.ask("link:left:2:1") == "OK:LINK(left)"
        closed = a.recv()
        assert closed.startswith("INFO:link_closed:left:relay: "), closed
        reason = closed.removeprefix("INFO:link_closed:left:")
        assert a.ask("recv:left:x") == f"FAIL(recv left: link closed: {reason})"
        assert a.ask("link:left:2:1") == "OK:LINK(left)"  # an ended link's name is free
        assert a.recv() == closed
        assert a.ask("close_link:left") == "OK:CLOSE_LINK(left)"


def test_the_relays_fail_reaches_a_pending_recv(keys: KeySet) -> None:
    """A file for an absent partner over the relay's held-bytes bound: the relay ends the
    sender's link with FAIL(relay: ...), which its waiting recv reports."""
    with (
        Relay(keys, TOKEN, limits=RelayLimits(held_per_partner=2000)) as small,
        workers(keys, small, 1, nonblock=1) as (a,),
    ):
        data = blob(3, 5000)
        (tmpdir_of(a) / "f").write_bytes(data)
        assert a.ask("link:x:1:2") == "OK:LINK(x)"  # nobody is <me> 2
        assert a.ask("recv:x:got") == "OK:RECEIVING(x)"
        assert a.ask("send:x:f") == "OK:SENDING(x)"
        messages = collect(a, 2)
        closed = next(m for m in messages if m.startswith("INFO:link_closed:x:"))
        reason = closed.removeprefix("INFO:link_closed:x:")
        assert reason.startswith("relay: held bytes for <me> 2 would be "), reason
        failed = f"FAIL(recv x: link closed: {reason})"
        assert failed in messages and messages.index(closed) < messages.index(failed)
        # the file went out before the relay refused it, or the link ended first
        sent = f"OK:SEND(x:{len(data)}:{sha(data)})"
        assert {sent, f"FAIL(send x: link closed: {reason})"} & set(messages), messages


def test_a_relay_that_goes_away_fails_a_pending_recv(keys: KeySet) -> None:
    relay = Relay(keys, TOKEN)
    relay.start()
    try:
        with workers(keys, relay, 1, nonblock=1) as (a,):
            assert a.ask("link:left:2:1") == "OK:LINK(left)"
            assert a.ask("recv:left:x") == "OK:RECEIVING(left)"
            relay.stop()
            closed = a.recv()
            assert closed.startswith("INFO:link_closed:left:"), closed
            reason = closed.removeprefix("INFO:link_closed:left:")
            assert a.recv() == f"FAIL(recv left: link closed: {reason})"
    finally:
        relay.stop()


def test_warm_reuse_leaves_no_links_or_spools(keys: KeySet, relay: Relay) -> None:
    """Two invocations in one process, as a warm Lambda environment runs them."""
    with workers(keys, relay, 1) as (peer,):
        peer_dir = tmpdir_of(peer)
        assert peer.ask("link:right:1:2") == "OK:LINK(right)"
        (peer_dir / "f").write_bytes(b"left behind")
        before = link_threads()
        with connected_worker(keys, relay=relay_field(relay)) as (a, worker):
            assert a.ask("link:left:2:1") == "OK:LINK(left)"
            assert a.ask("link:other:7:8") == "OK:LINK(other)"
            assert peer.ask("send:right:f") == f"OK:SEND(right:11:{sha(b'left behind')})"
            assert a.recv() == f"INFO:file:left:11:{sha(b'left behind')}"
            spool = tmpdir_of(a) / ".links"
            assert any(spool.rglob("*")), "the arrived file is spooled"
            quit_and_join(a, worker)  # the file is never received
        assert not spool.exists()
        assert link_threads() == before
        with connected_worker(keys, relay=relay_field(relay)) as (a, worker):
            assert a.ask("recv:left:x") == "FAIL(recv: no link named left)"
            assert a.ask("close_link:other") == "FAIL(close_link: no link named other)"
            # another <me>: the relay may not have seen the first invocation's link go yet
            assert a.ask("link:left:12:11") == "OK:LINK(left)"
            assert a.ask("seti:recv_timeout:0") == "OK:SETI(recv_timeout)"
            assert a.ask("recv:left:x") == "FAIL(recv left: no file within 0 s)"
            quit_and_join(a, worker)
        assert link_threads() == before
