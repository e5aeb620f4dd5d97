"""mu: burst-parallel jobs on AWS Lambda, driven by per-worker state machines over mutual TLS.

The top level re-exports the pure core only (errors, protocol, states, actor), so importing
``mu.worker`` inside a Lambda bundle loads nothing beyond the standard library. The states
and the actor (19 dataclasses, about 2.5 ms of CPU to build) are loaded on first use of one
of their names (PEP 562): a worker, which uses neither, never builds them. The one
exception is :func:`run_job`, the library's entry to a whole run, which imports the
composition root (``mu.cli``) only when called.
"""

from __future__ import annotations

import typing

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

if typing.TYPE_CHECKING:
    from mu.actor import Actor, Lifecycle
    from mu.runopts import RunResult
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

_LAZY: dict[str, str] = {
    "Actor": "mu.actor",
    "Lifecycle": "mu.actor",
    **dict.fromkeys(
        ("CommandListState", "ErrorState", "ForLoopState", "IfElseState", "InfoWatcherState",
         "MachineState", "MultiPassState", "OnePassState", "SuperpositionState",
         "TerminalState", "TerminatedState"),
        "mu.states"),
}
"""The re-exported names loaded on first use, and the module each comes from."""

__version__ = "0.1.0"


def run_job(first_state: typing.Any, **options: typing.Any) -> RunResult:
    """Run a job of your own (its first state class) and return its result.

    ``mu.run_job(Convert, workers=2, bucket="jobs", input_dir="in", output_dir="out")`` runs
    ``Convert`` on 2 workers on the local backend, as ``mu run`` does; see
    :func:`mu.cli.run_job` for every option.
    """
    from mu.cli import run_job as run

    result: RunResult = run(first_state, **options)
    return result


def __getattr__(name: str) -> typing.Any:
    """``mu.Actor`` and the states, imported on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mu' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "run_job",
]
