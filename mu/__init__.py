"""mu: burst-parallel jobs on AWS Lambda, driven by per-worker state machines over mutual TLS.

The top level re-exports the pure core only (errors, protocol, states, actor), so importing
``mu.worker`` inside a Lambda bundle loads nothing beyond the standard library.
"""

from __future__ import annotations

from mu.actor import Actor, Lifecycle
from mu.errors import (
    ConfigError,
    FrameTooLarge,
    HandshakeTimeout,
    LaunchError,
    LocalProtocolError,
    MuError,
    ProtocolError,
    RemoteProtocolError,
    TransportError,
    WorkerFailed,
)
from mu.protocol import CLOSED, EXPECT, NEED_DATA, FrameDecoder, encode_frame, parse_message
from mu.states import (
    CommandListState,
    ErrorState,
    ForLoopState,
    IfElseState,
    InfoWatcherState,
    MachineState,
    MultiPassState,
    OnePassState,
    SuperpositionState,
    TerminalState,
    TerminatedState,
)

__version__ = "0.1.0"

__all__ = [
    "CLOSED",
    "EXPECT",
    "NEED_DATA",
    "Actor",
    "CommandListState",
    "ConfigError",
    "ErrorState",
    "ForLoopState",
    "FrameDecoder",
    "FrameTooLarge",
    "HandshakeTimeout",
    "IfElseState",
    "InfoWatcherState",
    "LaunchError",
    "Lifecycle",
    "LocalProtocolError",
    "MachineState",
    "MuError",
    "MultiPassState",
    "OnePassState",
    "ProtocolError",
    "RemoteProtocolError",
    "SuperpositionState",
    "TerminalState",
    "TerminatedState",
    "TransportError",
    "WorkerFailed",
    "__version__",
    "encode_frame",
    "parse_message",
]
