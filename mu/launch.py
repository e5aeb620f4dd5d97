"""The launcher interface that backends implement, and the invocation payload.

Theory of operation
-------------------
mu never imports a backend. The composition root (``mu.cli``) asks ``backends.get_backend``
for a :class:`Site` by name and passes it (or its launcher) to whatever needs it (the run
path in :mod:`mu.runopts`, the coordinator, ``lambdaize``). A site is everything a run needs
from where it happens: a :class:`Launcher` (any object with its methods; tests pass a fake
one), an S3 client, the address workers dial back to, what is wrong with the credentials,
and the coordinator's defaults there (listen address, handshake bound). Nobody asks which
backend a site is. Every worker of a run receives the same JSON payload (:class:`WorkerPayload`), so a
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
    "DEFAULT_MEMORY",
    "DEFAULT_RUNTIME",
    "DEFAULT_TIMEOUT",
    "MAX_PAYLOAD",
    "FunctionSettings",
    "FunctionSpec",
    "Invocation",
    "LaunchReport",
    "LaunchSpec",
    "Launcher",
    "Site",
    "WorkerPayload",
]

DEFAULT_MEMORY = 1536
"""A function's memory in MB unless told (``mu lambdaize --memory``, ``MEM_SIZE``)."""

DEFAULT_TIMEOUT = 180
"""A function's timeout in seconds unless told (``mu lambdaize --timeout``, ``TIMEOUT``)."""

DEFAULT_RUNTIME = "python3.12"
"""A function's Lambda runtime unless told (``mu lambdaize --runtime``)."""

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
    runtime: str = DEFAULT_RUNTIME
    role: str = ""
    memory: int = DEFAULT_MEMORY
    timeout: int = DEFAULT_TIMEOUT
    architecture: str = "x86_64"
    environment: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class FunctionSettings:
    """What a deployed function is billed by: its memory, its timeout (the longest an
    invocation can be billed for) and its architecture (``x86_64`` or ``arm64``)."""

    memory_mb: int = DEFAULT_MEMORY
    timeout_s: int = DEFAULT_TIMEOUT
    architecture: str = "x86_64"

    @classmethod
    def from_configuration(cls, conf: Mapping[str, Any]) -> FunctionSettings:
        """From Lambda's GetFunctionConfiguration answer (a field it lacks keeps Lambda's
        own default: 128 MB, 3 s, x86_64).

        >>> FunctionSettings.from_configuration(
        ...     {"MemorySize": 3008, "Timeout": 60, "Architectures": ["arm64"]})
        FunctionSettings(memory_mb=3008, timeout_s=60, architecture='arm64')
        """
        architectures = conf.get("Architectures") or ["x86_64"]
        return cls(int(conf.get("MemorySize", 128)), int(conf.get("Timeout", 3)),
                   str(architectures[0]))


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


class Site(Protocol):
    """Where a run happens: a backend with everything a run needs from it.

    ``backends.get_backend(name, options)`` builds one; call :meth:`close` when done (it
    stops what the site started). Nothing outside ``backends`` asks which site it is: what
    differs between sites is one of these members.

    Attributes:
        name: the backend's name (for messages).
        listen_host: where the coordinator listens unless told (``--host``): loopback for
            sites on this machine, every interface for workers on AWS.
        max_handshakes: TLS handshakes in progress at once unless told: a few dozen over
            loopback, more where each waits a long round trip (see ``RunConfig``).
        deploys_jobs: the site is a rehearsal stage: each run deploys its own function to it
            and makes the bucket it names.
        private: the site was started for this command and stops with it (its functions
            go with it).
        max_zipped: the largest bundle it takes (None: bigger ones go through S3).
        regions: where functions are deployed and invoked, round-robin; the first also
            signs S3 requests.
        default_role: the execution role a function deployed there gets unless one is
            given ("": one must be given, as on AWS).
    """

    name: str
    regions: tuple[str, ...]
    default_role: str
    listen_host: str
    max_handshakes: int
    deploys_jobs: bool
    private: bool

    @property
    def max_zipped(self) -> int | None: ...

    @property
    def launcher(self) -> Launcher:
        """The site's launcher (made on first use).

        Raises:
            ConfigError: the backend cannot be set up (an unknown ``AWS_PROFILE``).

        >>> site.launcher.function_exists("png2y4m", "us-east-1")
        True
        """
        ...

    def s3_client(self, region: str) -> Any:
        """A boto3-compatible S3 client for the site's S3, signing for ``region``.

        >>> site.s3_client("us-east-1").head_bucket(Bucket="frames")
        {...}
        """
        ...

    def logs_client(self, region: str) -> Any:
        """A boto3 ``logs`` client for where the site's functions log (CloudWatch Logs: the
        emulator's for a local site, AWS's otherwise), or None where nothing logs (workers
        started by hand). The bill reads each invocation's REPORT line through it.

        >>> site.logs_client("us-east-1").describe_log_groups()
        {...}
        """
        ...

    def function_settings(self, name: str, region: str) -> FunctionSettings | None:
        """The memory, timeout and architecture of function ``name`` as deployed in
        ``region`` (Lambda's GetFunctionConfiguration), None when it is not deployed there.
        The estimate and the bill price with them.

        Raises:
            MuError: the site could not be asked, or has no functions (workers started by
                hand): named.

        >>> site.function_settings("png2y4m", "us-east-1")
        FunctionSettings(memory_mb=1536, timeout_s=180, architecture='x86_64')
        """
        ...

    def dial_back_address(self, region: str) -> str | None:
        """The address workers launched in ``region`` connect back to (None: the
        coordinator's listening address).

        Raises:
            ConfigError: it cannot be found (a Lambda host that does not resolve).

        >>> site.dial_back_address("us-east-1")
        '127.0.0.1'
        """
        ...

    def check_credentials(self) -> list[str]:
        """What is wrong with the site's credentials, one line each (empty: nothing).

        A run's preflight reports these with its own; with any, nothing that needs the
        launcher or S3 is tried.

        >>> site.check_credentials()
        []
        """
        ...

    def duplicated(self) -> int:
        """Invocations the site delivered twice (rehearsal faults; 0 elsewhere).

        >>> site.duplicated()
        0
        """
        ...

    def close(self) -> None:
        """Stop what the site started and close its clients; calling it again is harmless.

        >>> site.close()
        """
        ...
