"""The mu wire protocol, sans-IO.

Theory of operation
-------------------
Both ends exchange *frames*: the payload length as 12 ASCII decimal digits, zero padded, one
space (0x20), then exactly that many payload bytes::

    b"000000000008 OK:HELLO"

This module never touches a socket. Senders call :func:`encode_frame`; receivers feed whatever
bytes arrived to :meth:`FrameDecoder.receive_data` (``b""`` meaning EOF) and then call
:meth:`FrameDecoder.next_frame` until it returns :data:`NEED_DATA`. Any split or merge of frames
across reads decodes the same. A receiver of large frames can instead read straight into the
decoder's reused buffer (:meth:`FrameDecoder.get_buffer`, :meth:`FrameDecoder.buffer_updated`)
and take each payload as a view of it (:meth:`FrameDecoder.next_frame_view`), so that no new
memory is touched per frame.

Rules:

1. A header that is not 12 digits and a space, or that announces more than the configured
   maximum, is a :class:`~mu.errors.RemoteProtocolError` (:class:`~mu.errors.FrameTooLarge` for
   the latter). The decoder is then poisoned: every later call raises the same error.
2. EOF on a frame boundary is clean (:data:`CLOSED`); EOF inside a frame is an error.
3. Anything other than ``RemoteProtocolError`` escaping ``next_frame()`` is a bug.

Messages are text. Coordinator -> worker messages are commands ``name:args``; worker ->
coordinator messages are responses starting ``OK``, ``FAIL(reason)``, or asynchronous
``INFO:key:value`` updates. :func:`parse_message` classifies them and :data:`EXPECT` maps each
command name to the prefix of the response that completes it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Final, NoReturn

from mu.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

__all__ = [
    "CLOSED",
    "DEFAULT_KEEP",
    "DEFAULT_MAX_FRAME",
    "EXPECT",
    "HEADER_LEN",
    "NEED_DATA",
    "REQUEST_ID_INFO",
    "Fail",
    "FrameDecoder",
    "Info",
    "Message",
    "Ok",
    "Retval",
    "Sentinel",
    "command_name",
    "decode_text",
    "encode_frame",
    "encode_text",
    "expected_response",
    "frame_header",
    "parse_message",
]

DIGITS: Final = 12
HEADER_LEN: Final = DIGITS + 1
DEFAULT_MAX_FRAME: Final = 64 * 1024 * 1024
_MAX_ENCODABLE: Final = 10**DIGITS - 1
DEFAULT_KEEP: Final = 64 * 1024
"""The room a decoder keeps, by default, once it has returned every frame."""


class Sentinel(enum.Enum):
    """Non-frame results of :meth:`FrameDecoder.next_frame`."""

    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
"""More bytes are needed before the next frame is complete."""
CLOSED: Final = Sentinel.CLOSED
"""The peer closed the stream cleanly, on a frame boundary."""


def encode_frame(payload: bytes) -> bytes:
    """Frame one payload for the wire.

    Args:
        payload: the bytes to send.

    Returns:
        The 12-digit length header, a space and the payload.

    Raises:
        LocalProtocolError: the payload is longer than 12 decimal digits can express.

    >>> encode_frame(b"OK:HELLO")
    b'000000000008 OK:HELLO'
    """
    return frame_header(len(payload)) + payload


def frame_header(n: int) -> bytes:
    """The header of a frame of ``n`` payload bytes (sent before the payload, to frame it
    without copying it).

    Raises:
        LocalProtocolError: ``n`` is longer than 12 decimal digits can express.

    >>> frame_header(8)
    b'000000000008 '
    """
    if n > _MAX_ENCODABLE:
        raise LocalProtocolError(f"payload length {n} exceeds maximum {_MAX_ENCODABLE}")
    return b"%012d " % n


def encode_text(message: str) -> bytes:
    """Frame a text message (UTF-8)."""
    return encode_frame(message.encode("utf-8", "surrogateescape"))


def decode_text(payload: bytes) -> str:
    """Decode a frame payload to text; bytes that are not UTF-8 survive as surrogates."""
    return payload.decode("utf-8", "surrogateescape")


class FrameDecoder:
    """Incremental decoder of length-prefixed frames.

    Received bytes live in one buffer that is reused: consumed bytes are dropped by moving
    what is left to its front when more room is needed, and the buffer grows (doubling) only
    when what is left and what is asked for do not fit. A stream of 1 MB frames so costs no
    new memory per frame beyond the payloads :meth:`next_frame` returns, and none with
    :meth:`get_buffer` and :meth:`next_frame_view`, which receive into the buffer and hand
    payloads out of it without a copy (new memory's first touch costs more than a copy).

    Args:
        max_frame: the largest payload accepted, in bytes.
        peer: a name for the peer used in error messages ("worker 12", "127.0.0.1:4242").
        keep: the room kept once every frame was returned (more is given back then); a
            receiver of large frames keeps room for two of them and a read.

    >>> d = FrameDecoder()
    >>> d.receive_data(b"000000000002 OK0000")
    >>> d.next_frame()
    b'OK'
    >>> d.next_frame()
    NEED_DATA
    """

    __slots__ = ("_buf", "_end", "_eof", "_error", "_pos", "keep", "max_frame", "peer")

    def __init__(
        self, max_frame: int = DEFAULT_MAX_FRAME, peer: str = "", keep: int = DEFAULT_KEEP
    ) -> None:
        if max_frame < 0:
            raise ValueError(f"max_frame must be >= 0, got {max_frame}")
        self.max_frame = max_frame
        self.peer = peer
        self.keep = keep
        self._buf = bytearray()  # bytes [_pos, _end) arrived and are not yet returned
        self._pos = 0
        self._end = 0
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def at_eof(self) -> bool:
        """Whether EOF was fed."""
        return self._eof

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self._end - self._pos

    def receive_data(self, data: bytes) -> None:
        """Feed received bytes; ``b""`` marks EOF.

        Raises:
            LocalProtocolError: data fed after EOF.
        """
        if self._eof:
            if data:
                raise LocalProtocolError("received data after EOF")
            return
        if not data:
            self._eof = True
            return
        self.get_buffer(len(data))[:] = data
        self._end += len(data)

    def get_buffer(self, size: int) -> memoryview:
        """Room for ``size`` more bytes, to receive into (``sock.recv_into``); then say how
        many arrived with :meth:`buffer_updated` (EOF is still ``receive_data(b"")``).

        The buffer is reused: a view :meth:`next_frame_view` returned earlier is no longer
        valid after this call.

        Raises:
            LocalProtocolError: called after EOF.
        """
        if self._eof:
            raise LocalProtocolError("received data after EOF")
        buf, pos, end = self._buf, self._pos, self._end
        if pos == end:  # everything was returned: start over at the front
            pos = end = 0
            if len(buf) > self.keep:
                buf = bytearray()  # give back the room a large frame took
        if end + size > len(buf):
            kept = end - pos
            room = buf if kept + size <= len(buf) else bytearray(
                max(2 * len(buf), kept + size, 4096))
            memoryview(room)[:kept] = memoryview(buf)[pos:end]  # a memmove within buf
            buf, pos, end = room, 0, kept
        self._buf, self._pos, self._end = buf, pos, end
        return memoryview(buf)[end : end + size]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` (at least 1) were written at the front of the last :meth:`get_buffer`."""
        if not 0 < nbytes <= len(self._buf) - self._end:
            raise ValueError(f"buffer_updated({nbytes}): not in 1..{len(self._buf) - self._end}")
        self._end += nbytes

    def next_frame(self) -> bytes | Sentinel:
        """Return the next complete payload, :data:`NEED_DATA` or :data:`CLOSED`.

        Raises:
            RemoteProtocolError: the peer broke the framing; the decoder stays broken.
        """
        frame = self.next_frame_view()
        return frame if isinstance(frame, Sentinel) else frame.tobytes()

    def next_frame_view(self) -> memoryview | Sentinel:
        """As :meth:`next_frame`, but the payload is a view into the decoder's buffer, valid
        until the next :meth:`get_buffer` or :meth:`receive_data` (no copy).

        Raises:
            RemoteProtocolError: the peer broke the framing; the decoder stays broken.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        end = self._end
        start = pos + HEADER_LEN
        if end >= start:
            header = bytes(buf[pos:start])
            if header[DIGITS] == 0x20 and header[:DIGITS].isdigit():
                length = int(header[:DIGITS])
                if length > self.max_frame:
                    self._error = FrameTooLarge(length, self.max_frame, self.peer)
                    raise self._error
            else:
                self._bad_header(pos)
            stop = start + length
            if stop <= end:
                self._pos = stop
                return memoryview(buf)[start:stop]
        elif end > pos and not bytes(buf[pos:end]).isdigit():
            # Reject garbage as soon as it is visible, not only after 13 bytes arrive.
            self._bad_header(pos)
        if self._eof:
            avail = end - pos
            if avail == 0:
                return CLOSED
            self._fail(f"stream ended inside a frame ({avail} bytes buffered)")
        return NEED_DATA

    def _bad_header(self, pos: int) -> NoReturn:
        """Raise the error that names what is wrong with the (partial) header at ``pos``."""
        header = bytes(self._buf[pos : min(pos + HEADER_LEN, self._end)])
        if not header[:DIGITS].isdigit():
            self._fail(f"frame header {header!r} is not {DIGITS} decimal digits and a space")
        self._fail(f"frame header {header!r} lacks the space after the length")

    def _fail(self, message: str) -> NoReturn:
        where = f" from {self.peer}" if self.peer else ""
        self._error = RemoteProtocolError(message + where)
        raise self._error


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Ok:
    """A success response: ``OK`` followed by anything."""

    text: str


@dataclass(frozen=True, slots=True)
class Fail:
    """A failure response ``FAIL(reason)``; ``reason`` is the text between the parentheses."""

    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Info:
    """An asynchronous update ``INFO:key:value``."""

    text: str
    key: str
    value: str


Message = Ok | Fail | Info


def parse_message(text: str) -> Message:
    """Classify a worker -> coordinator message.

    Raises:
        LocalProtocolError: the text is none of ``OK...``, ``FAIL...``, ``INFO:k:v``.

    >>> parse_message("FAIL(no such variable x)")
    Fail(text='FAIL(no such variable x)', reason='no such variable x')
    """
    if text.startswith("OK"):
        return Ok(text)
    if text.startswith("FAIL"):
        reason = text[4:]
        if reason.startswith("(") and reason.endswith(")"):
            reason = reason[1:-1]
        return Fail(text, reason)
    if text.startswith("INFO:"):
        key, sep, value = text[5:].partition(":")
        if sep:
            return Info(text, key, value)
    raise LocalProtocolError(f"message {text[:80]!r} is not OK..., FAIL(...) or INFO:key:value")


REQUEST_ID_INFO: Final = "INFO:lambda_request_id:"
"""What a worker sends right after its hello when it runs in Lambda: ``INFO:lambda_request_id:
<the invocation's request id>``. A 2016 update in form (``INFO:key:value``): a coordinator that
does not know the key stores it in ``info``; mu's actor keeps it for the bill and hands it to
no state."""


EXPECT: Final[dict[str, str | None]] = {
    "set": "OK:SET",
    "seti": "OK:SETI",
    "get": "OK:GET",
    "geti": "OK:GETI",
    "dump_vals": "OK:DUMP_VALS",
    "retrieve": "OK:RETRIEV",
    "upload": "OK:UPLOAD",
    "run": "OK:R",
    "echo": "OK:ECHO",
    "connect": "OK:CONNECT",
    "close_connect": "OK:CLOSE_CONNECT",
    "link": "OK:LINK",
    "send": "OK:SEND",
    "recv": "OK:REC",
    "close_link": "OK:CLOSE_LINK",
    "quit": None,
    "fault": None,
}
"""Command name -> prefix of the response that completes it (``None``: no response).

The prefixes cover both blocking and nonblock answers: ``OK:RETRIEV`` matches ``OK:RETRIEVE(``
and ``OK:RETRIEVING(``; ``OK:R`` matches ``OK:RETVAL(`` and ``OK:RUNNING(``; ``OK:SEND`` matches
``OK:SEND(`` and ``OK:SENDING(``; ``OK:REC`` matches ``OK:RECV(`` and ``OK:RECEIVING(``.
"""


def command_name(command: str) -> str:
    """The name of a command: the text before the first ``:``."""
    return command.partition(":")[0]


def expected_response(command: str) -> str | None:
    """The response prefix that completes ``command``.

    Raises:
        LocalProtocolError: the command name is not in :data:`EXPECT`.
    """
    name = command_name(command)
    try:
        return EXPECT[name]
    except KeyError:
        raise LocalProtocolError(
            f"no expected response known for command {name!r}; known: {', '.join(EXPECT)}"
        ) from None


@dataclass(frozen=True, slots=True)
class Retval:
    """What ``run:`` reports: ``OK:RETVAL(n):OUTPUT(...):COMMAND(...)``, for every exit status.

    ``status`` is the exit status (negative: killed by that signal); a non-zero status is data
    for the job (it may branch on it), not a failure of the worker.

    >>> Retval.parse("OK:RETVAL(2):OUTPUT(bad frame):COMMAND(./png2y4m x)")
    Retval(status=2, output='bad frame', command='./png2y4m x')
    >>> Retval(0, "", "true").text
    'OK:RETVAL(0):OUTPUT():COMMAND(true)'
    """

    status: int
    output: str
    command: str

    PREFIX: ClassVar[str] = "OK:RETVAL("

    @property
    def text(self) -> str:
        """The response text the worker sends."""
        return f"{self.PREFIX}{self.status}):OUTPUT({self.output}):COMMAND({self.command})"

    @classmethod
    def parse(cls, text: str) -> Retval | None:
        """The parts of a ``run:`` response, or ``None`` if ``text`` is not one.

        The output may hold any text, parentheses included: the command is what follows the
        last ``):COMMAND(``.
        """
        if not text.startswith(cls.PREFIX) or not text.endswith(")"):
            return None
        status_text, sep, rest = text[len(cls.PREFIX) :].partition("):OUTPUT(")
        output, sep2, command = rest[:-1].rpartition("):COMMAND(")
        try:
            status = int(status_text)
        except ValueError:
            return None
        if not sep or not sep2:
            return None
        return cls(status, output, command)
