"""The command line, parsed once: frozen, typed options for a job, a run, its keys and its site.

Theory of operation
-------------------
``mu.cli`` (the composition root) is the only module that sees ``argparse``. It turns the
words into these dataclasses, once, and hands them down; everything below it (the run path
in :mod:`mu.runopts`, the jobs in :mod:`mu.apps`, the backends) takes them as they are.
Each default is stated once, here, as the field's default; the parser reads its defaults
from these fields (``default=RunOptions.retries``), so ``--help``, the library entry
(:func:`mu.run_job`) and the command line cannot disagree. The coordinator's own defaults
(retries, arrival timeout) come from :class:`~mu.config.RunConfig`, the function's (memory,
timeout) from :mod:`mu.lambdaize`.

- :class:`KeyOptions`: the key files (``-c -s -k --worker-cert --worker-key``); the 2016
  environment variables fill what they leave out (:func:`mu.runopts.load_keys`).
- :class:`RunOptions`: how the coordinator runs (port, deadlines, retries, faults, ...).
  The listen address and the handshake bound default to the site's (None here).
- :class:`SiteOptions`: where the run happens (the backend's endpoints, regions, the
  dial-back address); :func:`backends.get_backend` turns them into a
  :class:`~mu.launch.Site`.
- :class:`JobOptions`: the job's size and its files (workers, bucket, function, input and
  output directories); :class:`Png2Y4MOptions` adds png2y4m's own.

:func:`split_regions` is the one place a region list (``us-east-1,us-west-2``) is parsed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mu.config import DEFAULT_PORT, RunConfig
from mu.errors import ConfigError
from mu.faults import FaultSpec
from mu.relay_core import DEFAULT_RELAY_PORT

__all__ = [
    "DEFAULT_BINARY",
    "DEFAULT_REGION",
    "SPECULATE_FACTOR",
    "JobOptions",
    "KeyOptions",
    "LogsOptions",
    "Png2Y4MOptions",
    "RunOptions",
    "SiteOptions",
    "split_regions",
]

DEFAULT_REGION = "us-east-1"

SPECULATE_FACTOR = 3.0
"""``--speculate`` without a value: a backup after 3 times the state's median."""

DEFAULT_BINARY = Path(__file__).resolve().parents[1] / "function" / "png2y4m" / "png2y4m"
"""The png2y4m binary built by ``make -C function/png2y4m`` in a source checkout."""


def split_regions(items: str | Iterable[str], flag: str = "-r/--regions") -> tuple[str, ...]:
    """Distinct region names, in order, from comma-separated words.

    Args:
        items: ``"us-east-1,us-west-2"`` or several such words (a repeated flag).
        flag: the flag named when no region is left.

    Raises:
        ConfigError: no region at all.

    >>> split_regions(["us-east-1, eu-west-1", "us-east-1"])
    ('us-east-1', 'eu-west-1')
    """
    words = [items] if isinstance(items, str) else list(items)
    regions = tuple(dict.fromkeys(r.strip() for w in words for r in w.split(",") if r.strip()))
    if not regions:
        raise ConfigError(f"{flag} names no region")
    return regions


@dataclass(frozen=True)
class KeyOptions:
    """The key files of a run (None: from the environment, else ephemeral keys)."""

    ca_cert: str | None = None
    server_cert: str | None = None
    server_key: str | None = None
    worker_cert: str | None = None
    worker_key: str | None = None


@dataclass(frozen=True)
class RunOptions:
    """How the coordinator runs; see ``mu png2y4m --help`` for each flag."""

    port: int = DEFAULT_PORT
    host: str | None = None  # None: the site's listen address
    debug: bool = False
    record: str | None = None
    profile: str | None = None
    deadline: float | None = None
    run_deadline: float | None = None
    extra: int = 0
    retries: int = RunConfig.retries
    arrival_timeout: float = RunConfig.arrival_timeout
    speculate: float | None = None
    max_handshakes: int | None = None  # None: the site's bound
    resume: bool = False
    faults: FaultSpec | None = None
    actors: tuple[int, ...] | None = None
    tls: bool = True
    keys: KeyOptions = field(default_factory=KeyOptions)
    dry_run: bool = False  # preflight, plan and estimate; launch nothing
    estimate_from: str | None = None  # a run record whose durations the estimate uses
    price_file: str | None = None  # None: the table in the package (mu/prices.json)
    relay_port: int = DEFAULT_RELAY_PORT  # the relay beside the coordinator; 0: any


@dataclass(frozen=True)
class SiteOptions:
    """Where a run happens: the backend and its endpoints (see :class:`~mu.launch.Site`).

    Attributes:
        backend: the backend's name in ``backends.BACKENDS``.
        endpoint_url: a Lambda-compatible endpoint instead of AWS's (a running emulator).
        s3_endpoint_url: an S3 endpoint instead of AWS's.
        host_addr: the address workers dial back to, instead of the site's own choice.
        regions: where functions are deployed and invoked (the first also signs S3).
        code_bucket: S3 bucket for bundles too big to upload directly (lambda).
        payload_out: backend none: where the payload goes.
        worker_command: backend none: the command a worker started from a checkout runs.
        arrival_timeout: backend none: how long the run waits for hand-started workers.
        duplicate_rate: local rehearsals: probability of delivering an invocation twice.
        duplicate_seed: seeds those draws.
    """

    backend: str = "local"
    endpoint_url: str | None = None
    s3_endpoint_url: str | None = None
    host_addr: str | None = None
    regions: tuple[str, ...] = (DEFAULT_REGION,)
    code_bucket: str | None = None
    payload_out: str | None = None
    worker_command: str = ""
    arrival_timeout: float | None = None
    duplicate_rate: float = 0.0
    duplicate_seed: int = 0

    @property
    def region(self) -> str:
        """The first region: where S3 requests are signed and workers dial back from."""
        return self.regions[0]


@dataclass(frozen=True)
class JobOptions:
    """A job's size and files.

    Attributes:
        workers: actors (chunks of work), one worker each (``-n``).
        offset: the first actor number (``-o``).
        bucket: the S3 bucket the workers read and write (``-b``).
        function: the Lambda function the workers run in (``-l``).
        input_dir: upload these files first.
        output_dir: download the outputs here after the run.
    """

    workers: int = 1
    offset: int = 0
    bucket: str = ""
    function: str = "mu-runtime"
    input_dir: str | None = None
    output_dir: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"-n/--workers must be >= 1, got {self.workers}")
        if self.offset < 0:
            raise ConfigError(f"-o/--offset must be >= 0, got {self.offset}")


@dataclass(frozen=True)
class Png2Y4MOptions(JobOptions):
    """``mu png2y4m``: the 2016 ``png2y4m_server.py`` flags and defaults, plus the binary."""

    bucket: str = "excamera-us-east-1"
    function: str = "png2y4m"
    frames: int = 6
    video: str = "sintel-1k"
    informat: str = "png16"
    binary: str = str(DEFAULT_BINARY)


@dataclass(frozen=True)
class LogsOptions:
    """``mu logs``: one function's Lambda logs, and where to read them.

    Attributes:
        function: the function whose log group (``/aws/lambda/FUNCTION``) is read.
        backend: ``local`` (a running emulator) or ``lambda`` (AWS).
        since: only the last this many seconds (None: all the group holds).
        follow: keep printing new events until interrupted.
        request_id: only that invocation's lines.
        region: the region (None: the backend's default).
        endpoint_url: a CloudWatch Logs endpoint instead of the backend's.
        state_dir: local: the running emulator started with this state dir.
    """

    function: str
    backend: str = "local"
    since: float | None = None
    follow: bool = False
    request_id: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    state_dir: str | None = None
