"""Framing under every split, by example and by property (STYLE rule 10)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mu.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from mu.protocol import (
    CLOSED,
    DEFAULT_MAX_FRAME,
    EXPECT,
    HEADER_LEN,
    NEED_DATA,
    Fail,
    FrameDecoder,
    Info,
    Ok,
    Retval,
    decode_text,
    encode_frame,
    encode_text,
    expected_response,
    parse_message,
)
from tests.strategies import chunked


def drain(decoder: FrameDecoder, views: bool = False) -> list[bytes]:
    """Every complete frame, from ``next_frame`` (or ``next_frame_view``, which must give
    views)."""
    frames: list[bytes] = []
    while True:
        frame = decoder.next_frame_view() if views else decoder.next_frame()
        if frame is NEED_DATA or frame is CLOSED:
            return frames
        if views:
            assert isinstance(frame, memoryview)
            frame = frame.tobytes()
        assert isinstance(frame, bytes)
        frames.append(frame)


def check_three_ways(data: bytes, expected: list[bytes]) -> None:
    """Whole buffer, one byte at a time, and with trailing bytes left over."""
    whole = FrameDecoder()
    whole.receive_data(data)
    assert drain(whole) == expected
    assert whole.buffered == 0

    bytewise = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(data)):
        bytewise.receive_data(data[i : i + 1])
        got.extend(drain(bytewise))
    assert got == expected

    trailing = FrameDecoder()
    trailing.receive_data(data + b"0000000")
    assert drain(trailing) == expected
    assert trailing.buffered == 7
    assert trailing.next_frame() is NEED_DATA


def test_encode_matches_wire_format() -> None:
    assert encode_frame(b"OK:HELLO") == b"000000000008 OK:HELLO"
    assert encode_frame(b"") == b"000000000000 "
    assert encode_text("é") == b"000000000002 \xc3\xa9"


@pytest.mark.parametrize(
    "payloads",
    [[b"OK:HELLO"], [b""], [b"", b"", b"x"], [b"set:a:1", b"run:", b"0" * 1000], [b" " * 13]],
)
def test_decode_examples_every_split(payloads: list[bytes]) -> None:
    check_three_ways(b"".join(encode_frame(p) for p in payloads), payloads)


def test_eof_on_boundary_is_clean() -> None:
    d = FrameDecoder()
    d.receive_data(encode_frame(b"a"))
    d.receive_data(b"")
    assert d.next_frame() == b"a"
    assert d.next_frame() is CLOSED
    assert d.next_frame() is CLOSED


def test_eof_inside_frame_is_remote_error() -> None:
    d = FrameDecoder(peer="worker 3")
    d.receive_data(b"000000000010 short")
    assert d.next_frame() is NEED_DATA
    d.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match=r"stream ended inside a frame .*worker 3"):
        d.next_frame()


def test_eof_inside_header_is_remote_error() -> None:
    d = FrameDecoder()
    d.receive_data(b"00000")
    d.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="ended inside a frame"):
        d.next_frame()


def test_data_after_eof_is_a_local_error() -> None:
    d = FrameDecoder()
    d.receive_data(b"")
    d.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        d.receive_data(b"x")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"00000000000x hello", "not 12 decimal digits"),
        (b"GET / HTTP/1.1\r\n", "not 12 decimal digits"),
        (b"0000000000080OK:HELLO", "lacks the space"),
        (b"\x16\x03\x01\x02\x00", "not 12 decimal digits"),
        (b"-00000000001 x", "not 12 decimal digits"),
    ],
)
def test_malformed_headers(data: bytes, match: str) -> None:
    d = FrameDecoder()
    d.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match):
        d.next_frame()
    # The decoder stays broken: the same error again, nothing else.
    with pytest.raises(RemoteProtocolError, match=match):
        d.next_frame()


def test_garbage_is_rejected_before_a_full_header_arrives() -> None:
    d = FrameDecoder()
    d.receive_data(b"00x")
    with pytest.raises(RemoteProtocolError):
        d.next_frame()


def test_oversized_frame_names_length_limit_and_peer() -> None:
    d = FrameDecoder(max_frame=1000, peer="worker 12")
    d.receive_data(b"000000001001 ")
    with pytest.raises(FrameTooLarge) as info:
        d.next_frame()
    assert info.value.length == 1001
    assert info.value.limit == 1000
    assert str(info.value) == "frame length 1001 exceeds maximum 1000 from worker 12"
    assert isinstance(info.value, RemoteProtocolError)


def test_default_limit_is_64_mib() -> None:
    d = FrameDecoder()
    assert d.max_frame == DEFAULT_MAX_FRAME == 64 * 1024 * 1024
    d.receive_data(b"%012d " % 70_000_000)
    with pytest.raises(FrameTooLarge, match="frame length 70000000 exceeds maximum 67108864"):
        d.next_frame()


def test_frame_exactly_at_limit_is_accepted() -> None:
    d = FrameDecoder(max_frame=5)
    d.receive_data(encode_frame(b"12345"))
    assert d.next_frame() == b"12345"


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_frame"):
        FrameDecoder(max_frame=-1)


def test_payload_too_long_to_encode() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return 10**12

    with pytest.raises(LocalProtocolError, match="exceeds maximum"):
        encode_frame(Huge())


def test_long_streams_compact_the_buffer() -> None:
    d = FrameDecoder()
    payload = b"x" * 5000
    for _ in range(100):
        d.receive_data(encode_frame(payload) + encode_frame(payload)[:10])
        assert d.next_frame() == payload
        rest = encode_frame(payload)[10:]
        d.receive_data(rest)
        assert d.next_frame() == payload
    assert d.buffered == 0


@settings(max_examples=300)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    data=st.data(),
)
def test_roundtrip_any_payloads_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    d = FrameDecoder()
    got: list[bytes] = []
    for chunk in data.draw(chunked(stream)):
        d.receive_data(chunk)
        got.extend(drain(d))
    d.receive_data(b"")
    got.extend(drain(d))
    assert got == payloads
    assert d.next_frame() is CLOSED


def feed_into(decoder: FrameDecoder, chunk: bytes, room: int) -> None:
    """Receive ``chunk`` as a socket's ``recv_into`` would: into the decoder's own buffer,
    in pieces of at most ``room`` bytes asked for at a time."""
    for i in range(0, len(chunk), room):
        piece = chunk[i : i + room]
        view = decoder.get_buffer(room)
        assert len(view) == room
        view[: len(piece)] = piece
        decoder.buffer_updated(len(piece))


@settings(max_examples=300)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    room=st.integers(1, 400),
    copy=st.lists(st.booleans(), min_size=1),
    data=st.data(),
)
def test_receiving_into_the_buffer_decodes_the_same(
    payloads: list[bytes], room: int, copy: list[bool], data: st.DataObject
) -> None:
    """``get_buffer``/``buffer_updated`` mixed with ``receive_data``, frames taken as views
    or copies: the same payloads, in order, under any split."""
    stream = b"".join(encode_frame(p) for p in payloads)
    d = FrameDecoder()
    got: list[bytes] = []
    for i, chunk in enumerate(data.draw(chunked(stream))):
        if copy[i % len(copy)]:
            d.receive_data(chunk)
            got.extend(drain(d))
        else:
            feed_into(d, chunk, room)
            got.extend(drain(d, views=True))
    d.receive_data(b"")
    got.extend(drain(d, views=True))
    assert got == payloads
    assert d.next_frame_view() is CLOSED


@settings(max_examples=100)
@given(frame=st.integers(1, 5000), room=st.integers(1, 2000), count=st.integers(8, 40))
def test_a_stream_of_large_frames_reuses_one_buffer(frame: int, room: int, count: int) -> None:
    """Frames drained as they complete: the receives land in a few buffers, each new one at
    least twice the last (no new memory per frame), never larger than twice a frame and a
    receive. (When the last growth comes depends on where reads cut the frames: it can be
    late in a stream.)"""
    payload = bytes(range(256)) * (frame // 256) + b"x" * (frame % 256)
    stream = encode_frame(payload) * count
    d = FrameDecoder()
    buffers = []
    for i in range(0, len(stream), room):
        piece = stream[i : i + room]
        view = d.get_buffer(room)
        buffers.append(view.obj)
        view[: len(piece)] = piece
        d.buffer_updated(len(piece))
        for got in drain(d, views=True):
            assert got == payload
    assert d.buffered == 0
    last = buffers[-1]
    assert isinstance(last, bytearray)
    assert len(last) <= max(4096, 2 * (len(payload) + HEADER_LEN + room))
    distinct = {id(b) for b in buffers}  # all alive: ids are not reused
    assert len(distinct) <= 2 + (len(last) // 4096).bit_length()


def test_room_beyond_keep_is_given_back_once_every_frame_is_returned() -> None:
    d = FrameDecoder(keep=8192)
    d.receive_data(encode_frame(b"x" * 100_000))
    assert d.next_frame() == b"x" * 100_000
    assert len(d.get_buffer(100)) == 100
    assert len(d.get_buffer(100).obj) <= 8192  # type: ignore[arg-type]


def test_buffer_updated_beyond_the_room_given_is_refused() -> None:
    d = FrameDecoder()
    d.get_buffer(10)
    with pytest.raises(ValueError, match="buffer_updated"):
        d.buffer_updated(len(d.get_buffer(10)) + 4096)
    with pytest.raises(ValueError, match="buffer_updated"):
        d.buffer_updated(0)


def test_get_buffer_after_eof_is_a_local_error() -> None:
    d = FrameDecoder()
    d.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after EOF"):
        d.get_buffer(1)


@settings(max_examples=500)
@given(garbage=st.binary(max_size=200), data=st.data())
def test_garbage_yields_frames_or_remote_error_only(garbage: bytes, data: st.DataObject) -> None:
    d = FrameDecoder(max_frame=64)
    try:
        for chunk in data.draw(chunked(garbage)):
            d.receive_data(chunk)
            drain(d)
        d.receive_data(b"")
        drain(d)
    except RemoteProtocolError:
        pass


@settings(max_examples=200)
@given(prefix=st.lists(st.binary(max_size=50), max_size=5), garbage=st.binary(min_size=1, max_size=40))
def test_valid_frames_before_garbage_are_delivered(prefix: list[bytes], garbage: bytes) -> None:
    d = FrameDecoder()
    d.receive_data(b"".join(encode_frame(p) for p in prefix) + b"x" + garbage)
    got: list[bytes] = []
    with pytest.raises(RemoteProtocolError):
        while True:
            frame = d.next_frame()
            assert isinstance(frame, bytes)
            got.append(frame)
    assert got == prefix


@given(st.text())
def test_text_roundtrip(text: str) -> None:
    d = FrameDecoder()
    d.receive_data(encode_text(text))
    frame = d.next_frame()
    assert isinstance(frame, bytes)
    assert decode_text(frame) == text


def test_non_utf8_payload_survives_decoding() -> None:
    assert decode_text(b"OK:\xff").encode("utf-8", "surrogateescape") == b"OK:\xff"


# ------------------------------------------------------------------------- messages


def test_parse_messages() -> None:
    assert parse_message("OK:SET(a)") == Ok("OK:SET(a)")
    assert parse_message("OK") == Ok("OK")
    assert parse_message("FAIL(no such variable x)") == Fail(
        "FAIL(no such variable x)", "no such variable x"
    )
    assert parse_message("FAIL:odd") == Fail("FAIL:odd", ":odd")
    assert parse_message("INFO:k:v:w") == Info("INFO:k:v:w", "k", "v:w")


@pytest.mark.parametrize("text", ["", "ok", "HELLO", "INFO:novalue", "set:a:b"])
def test_parse_rejects_unknown_messages(text: str) -> None:
    with pytest.raises(LocalProtocolError, match="not OK"):
        parse_message(text)


def test_expect_table() -> None:
    assert expected_response("set:a:b") == "OK:SET"
    assert expected_response("retrieve:") == "OK:RETRIEV"
    assert "OK:RETRIEVE(b/k)".startswith(EXPECT["retrieve"] or "-")
    assert "OK:RETRIEVING(b/k)".startswith(EXPECT["retrieve"] or "-")
    assert "OK:RUNNING(x)".startswith(EXPECT["run"] or "-")
    assert "OK:RETVAL(0):OUTPUT():COMMAND(x)".startswith(EXPECT["run"] or "-")
    assert expected_response("quit:") is None
    with pytest.raises(LocalProtocolError, match="'frobnicate'"):
        expected_response("frobnicate:1")


# --------------------------------------------------------------------------- run: responses


@given(
    status=st.integers(-64, 255),
    output=st.text(),
    command=st.text().filter(lambda c: "):COMMAND(" not in c),
)
def test_retval_text_parses_back(status: int, output: str, command: str) -> None:
    """Any output (parentheses, colons, even ``):COMMAND(``) and status survive the trip."""
    result = Retval(status, output, command)
    assert result.text.startswith(f"OK:RETVAL({status}):OUTPUT(")
    assert result.text.startswith(EXPECT["run"] or "-")
    assert Retval.parse(result.text) == result


@pytest.mark.parametrize(
    "text",
    ["OK:RUNNING(x)", "OK:RETVAL(x):OUTPUT():COMMAND(y)", "OK:RETVAL(0):OUTPUT()",
     "FAIL(RETVAL(1):OUTPUT():COMMAND(x))", "OK:RETVAL(0):COMMAND(x)", ""],
)
def test_retval_parse_refuses_other_texts(text: str) -> None:
    assert Retval.parse(text) is None
