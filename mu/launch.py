"""The launcher interface that backends implement, and the invocation payload.

Theory of operation
-------------------
mu never imports a backend. The composition root (``mu.cli``) picks one by name from
``backends.BACKENDS`` and passes the instance to whatever needs it (the coordinator,
``lambdaize``). A backend is any object with the methods of :class:`Launcher`; tests pass a
fake one. Every worker of a run receives the same JSON payload (:class:`WorkerPayload`), so a
launch is "invoke function F, N times, with these bytes", spread over one or more regions.

The payload carries the CA certificate, the worker's own certificate and key, and the run
token. It never carries the coordinator's private key: :meth:`WorkerPayload.to_json` refuses a
payload in which any PEM private key equals the one given as ``forbidden_key``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mu.errors import ConfigError

__all__ = [
    "MAX_PAYLOAD",
    "FunctionSpec",
    "Invocation",
    "LaunchReport",
    "LaunchSpec",
    "Launcher",
    "WorkerPayload",
]

MAX_PAYLOAD = 1024 * 1024
"""Largest asynchronous (Event) invocation payload Lambda accepts, in bytes."""


@dataclass(frozen=True)
class WorkerPayload:
    """The JSON every worker of a run receives (DESIGN §3).

    ``mode`` 1 connects back to ``addr:port``; 0 runs the function's command once.
    """

    addr: str
    port: int
    token: str
    cacert: str = ""
    wrkcrt: str = ""
    wrkkey: str = ""
    bucket: str = ""
    region: str = "us-east-1"
    mode: int = 1
    nonblock: int = 0
    bg_silent: int = 0
    timeout: int = 300
    infile: str = ""
    outfile: str = ""
    quality: str = ""
    vars: str = ""
    args: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The payload as a JSON-able dict (``extra`` fields merged at top level)."""
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d

    def to_json(self, forbidden_key: str | None = None) -> bytes:
        """Serialise the payload.

        Args:
            forbidden_key: the coordinator's private key PEM; if it appears anywhere in the
                payload, refuse.

        Raises:
            ConfigError: the payload would carry ``forbidden_key`` or exceeds 1 MB.

        >>> WorkerPayload("127.0.0.1", 13579, "t0k").to_json()[:30]
        b'{"addr": "127.0.0.1", "port": '
        """
        data = json.dumps(self.to_dict()).encode()
        if forbidden_key and forbidden_key.strip():
            needle = json.dumps(forbidden_key.strip())[1:-1].encode()
            if needle in data:
                raise ConfigError("refusing to put the coordinator's private key in the payload")
        if len(data) > MAX_PAYLOAD:
            raise ConfigError(f"payload is {len(data)} bytes, above the {MAX_PAYLOAD} byte limit")
        return data


@dataclass(frozen=True)
class FunctionSpec:
    """What to deploy: a zip bundle and its Lambda settings."""

    name: str
    zip_bytes: bytes
    handler: str = "lambda_function.lambda_handler"
    runtime: str = "python3.12"
    role: str = ""
    memory: int = 1536
    timeout: int = 180
    architecture: str = "x86_64"
    environment: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class LaunchSpec:
    """Invoke ``function_name`` ``count`` times with ``payload``, round-robin over ``regions``."""

    function_name: str
    payload: bytes
    count: int
    regions: Sequence[str] = ("us-east-1",)

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigError(f"invocation count must be >= 0, got {self.count}")
        if not self.regions:
            raise ConfigError("at least one region is needed")


@dataclass(frozen=True)
class Invocation:
    """The outcome of one invocation request.

    ``status`` is the HTTP status of the last attempt (202 accepted), ``error`` the reason it
    was not accepted, ``throttled`` how many 429 answers it met on the way. Times are seconds
    from the monotonic clock of the launching process.
    """

    index: int
    region: str
    accepted: bool
    status: int | None = None
    error: str | None = None
    attempts: int = 1
    throttled: int = 0
    sent_at: float = 0.0
    done_at: float = 0.0


@dataclass(frozen=True)
class LaunchReport:
    """What a launch did: one :class:`Invocation` per requested invocation."""

    invocations: tuple[Invocation, ...]
    started: float = 0.0
    finished: float = 0.0

    @property
    def accepted(self) -> int:
        return sum(1 for i in self.invocations if i.accepted)

    @property
    def failed(self) -> int:
        return sum(1 for i in self.invocations if not i.accepted)

    @property
    def throttled(self) -> int:
        return sum(i.throttled for i in self.invocations)

    def by_region(self) -> dict[str, dict[str, int]]:
        """Per region: accepted, failed and throttled counts."""
        out: dict[str, dict[str, int]] = {}
        for inv in self.invocations:
            r = out.setdefault(inv.region, {"accepted": 0, "failed": 0, "throttled": 0})
            r["accepted" if inv.accepted else "failed"] += 1
            r["throttled"] += inv.throttled
        return out


class Launcher(Protocol):
    """A way to deploy functions and start workers. Backends implement this.

    Every method raises :class:`~mu.errors.LaunchError` (naming the function, region and
    the backend's error code) for anything the backend refuses.
    """

    name: str

    def create_function(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        """Create or update a function; return its configuration (AWS shape).

        >>> launcher.create_function(FunctionSpec("png2y4m_ab12cd34", zip_bytes), "us-east-1")
        {'FunctionName': 'png2y4m_ab12cd34', 'CodeSha256': '...', ...}
        """
        ...

    def function_exists(self, name: str, region: str) -> bool:
        """Whether ``name`` is deployed in ``region``.

        >>> launcher.function_exists("png2y4m_ab12cd34", "us-east-1")
        True
        """
        ...

    def delete_function(self, name: str, region: str) -> None:
        """Delete a function; deleting a missing one is not an error.

        >>> launcher.delete_function("png2y4m_ab12cd34", "us-east-1")
        """
        ...

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        """Start ``spec.count`` asynchronous invocations and report each one.

        >>> report = launcher.launch(LaunchSpec("png2y4m_ab12cd34", payload, 100))
        >>> report.accepted
        100
        """
        ...

    def close(self) -> None:
        """Release connections and stop anything the backend started.

        >>> launcher.close()
        """
        ...
