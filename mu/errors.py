"""The one error tree of mu.

::

    MuError
    ├── ProtocolError                 the peer or we broke the wire protocol
    │   ├── LocalProtocolError        raised by the pure core (protocol, states, actor)
    │   └── RemoteProtocolError       the same, relabelled at the receive boundary
    │       └── FrameTooLarge         a length header above the configured maximum
    ├── ConfigError                   bad flags, files, keys or job definitions
    ├── LaunchError                   a backend, or the AWS service behind it (Lambda, S3),
    │                                 could not be reached or refused a request
    ├── TransportError                sockets and TLS (handshake, EOF, timeouts)
    │   └── HandshakeTimeout
    └── WorkerFailed(actor, state, reason)

Contract: anything but ``RemoteProtocolError`` coming out of ``FrameDecoder.next_frame()``
is a bug. A protocol failure ends one connection, never the coordinator. Every message names
the offending value and, where there is one, the limit it broke.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

__all__ = [
    "ConfigError",
    "FrameTooLarge",
    "HandshakeTimeout",
    "LaunchError",
    "LocalProtocolError",
    "MuError",
    "ProtocolError",
    "RemoteProtocolError",
    "Translator",
    "TransportError",
    "WorkerFailed",
    "map_exceptions",
]


class MuError(Exception):
    """Base class of every error mu raises on purpose."""


class ProtocolError(MuError):
    """The wire protocol was broken (framing, unexpected message, bad state transition)."""

    def as_remote(self) -> RemoteProtocolError:
        """The same error relabelled as the peer's fault (used at the receive boundary)."""
        if isinstance(self, RemoteProtocolError):
            return self
        remote = RemoteProtocolError(*self.args)
        remote.__cause__ = self
        return remote


class LocalProtocolError(ProtocolError):
    """We (or the pure core acting for us) were asked to do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class FrameTooLarge(RemoteProtocolError):
    """A frame header announced more bytes than the configured maximum.

    Attributes:
        length: the announced payload length.
        limit: the configured maximum.
    """

    def __init__(self, length: int, limit: int, peer: str = "") -> None:
        where = f" from {peer}" if peer else ""
        super().__init__(f"frame length {length} exceeds maximum {limit}{where}")
        self.length = length
        self.limit = limit


class ConfigError(MuError):
    """A configuration value, file or flag is wrong; the message names it."""


class LaunchError(MuError):
    """A launcher backend failed to create, find or invoke a function, or an AWS service
    (Lambda, S3) could not be reached, timed out, throttled or failed (see :mod:`mu.aws`)."""


class TransportError(MuError):
    """A socket or TLS failure on one connection."""


class HandshakeTimeout(TransportError):
    """The TLS handshake or the hello did not complete within its deadline."""


class WorkerFailed(MuError):
    """A worker ended in an error state.

    Attributes:
        actor: the actor number.
        state: the name of the state it was in.
        reason: what went wrong, as the worker or the coordinator saw it.
    """

    def __init__(self, actor: int, state: str, reason: str) -> None:
        super().__init__(f"actor {actor} failed in {state}: {reason}")
        self.actor = actor
        self.state = state
        self.reason = reason


Translator = Callable[[BaseException, str], Exception]
"""Builds our exception from a foreign one and the ``where`` text (e.g. :func:`mu.aws.translate`)."""


@contextlib.contextmanager
def map_exceptions(
    mapping: Mapping[type[BaseException], type[Exception] | Translator], where: str = ""
) -> Iterator[None]:
    """Re-raise foreign exceptions as ours, once, at the boundary, keeping the cause.

    The most specific matching entry wins (``mapping`` order breaks ties); anything not in
    ``mapping`` passes through unchanged.

    Args:
        mapping: foreign exception class -> our exception class (built with the message
            ``"where: original message"``) or a translator ``(exc, where) -> exception``
            that words the message itself.
        where: a prefix naming the operation and the peer ("TLS handshake with 1.2.3.4:5").

    Raises:
        the mapped exception, ``from`` the original.
    """
    try:
        yield
    except Exception as exc:
        best: type[Exception] | Translator | None = None
        best_depth = -1
        for foreign, ours in mapping.items():
            if isinstance(exc, foreign):
                depth = type(exc).__mro__.index(foreign)
                if best is None or depth < best_depth:
                    best, best_depth = ours, depth
        if best is None:
            raise
        if not isinstance(best, type):
            raise best(exc, where) from exc
        raise best(f"{where}: {exc}" if where else str(exc)) from exc
