"""The ``local`` backend: the Lambda emulator and a moto S3 server on loopback.

Theory of operation
-------------------
A local run must exercise the same code as an AWS run, so this backend adds no launch logic
of its own. It starts (or attaches to) the emulator's Lambda API and a moto S3 server, both
bound to 127.0.0.1 on ports the kernel picks, then hands every :class:`~mu.launch.Launcher`
call to a :class:`~backends.aws_lambda.LambdaLauncher` whose ``endpoint_url`` is the
emulator: functions are created with boto3 and launched with the same pre-signed Event
requests as on AWS. Credentials are fixed dummies (nothing checks them locally).

What it started it stops, in reverse order, in :meth:`LocalLauncher.close` (also on
``with`` exit); attaching to an already running emulator (``endpoint_url=``) starts and stops
nothing. :attr:`LocalLauncher.s3_endpoint_url` is where the run's S3 client
(:meth:`LocalSite.s3_client`) and the workers point; :attr:`LocalLauncher.host_addr` is the
address workers dial back to (loopback).

:class:`LocalSite` is the :class:`~mu.launch.Site` around it: S3 clients with the dummy
credentials, dial-back to loopback, and the coordinator on loopback with 16 handshakes at
once. It is a rehearsal stage (``deploys_jobs``): a run deploys its own function to it.

``mu emulator`` runs the emulator in the foreground through :func:`run_emulator`, so that
``mu.cli`` reaches the emulator only through ``backends``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from types import TracebackType
from typing import Any

import boto3

from backends.aws_lambda import LambdaLauncher
from mu.errors import ConfigError, LaunchError
from mu.launch import FunctionSettings, FunctionSpec, LaunchReport, LaunchSpec
from mu.options import SiteOptions

__all__ = ["LOCAL_CREDENTIALS", "LocalLauncher", "LocalSite", "emulator_parser", "run_emulator"]

LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
"""Dummy credentials: requests are signed as on AWS, and nothing local checks them."""


class LocalLauncher:
    """A :class:`mu.launch.Launcher` over the local emulator (started here unless given).

    Args:
        endpoint_url: a running emulator to attach to; ``None`` starts one.
        s3_endpoint_url: a running S3 server; ``None`` starts moto's when an emulator is
            started here (an attached emulator brings its own; pass it to use S3).
        region: default region of the boto3 session.
        connections: keep-alive connections for launches (see ``LambdaLauncher``).
        pipeline: requests in flight per connection.
        duplicate_rate: rehearsals: the probability that the started emulator delivers an
            Event invocation twice (``--faults duplicate=``).
        duplicate_seed: seeds those draws.

    Attributes:
        endpoint_url: the emulator's Lambda API, ``http://127.0.0.1:PORT``.
        s3_endpoint_url: the S3 endpoint for clients and workers (may be ``None`` when
            attached to an emulator without being told its S3).
        host_addr: where workers dial back to the coordinator: ``"127.0.0.1"``.

    Raises:
        LaunchError: the emulator or S3 server could not start.
    """

    name = "local"
    host_addr = "127.0.0.1"

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        s3_endpoint_url: str | None = None,
        region: str = "us-east-1",
        connections: int = 16,
        pipeline: int = 1,
        duplicate_rate: float = 0.0,
        duplicate_seed: int = 0,
    ) -> None:
        self._duplicate = (duplicate_rate, duplicate_seed)
        self._started: list[Any] = []  # servers we own, in start order
        self._state_dir: str | None = None
        self.s3_endpoint_url = s3_endpoint_url
        try:
            if endpoint_url is None:
                endpoint_url = self._start_servers()
        except BaseException:
            self.close()
            raise
        self.endpoint_url = endpoint_url.rstrip("/")
        session = boto3.session.Session(region_name=region, **LOCAL_CREDENTIALS)
        self._lambda = LambdaLauncher(
            endpoint_url=self.endpoint_url,
            session=session,
            s3_endpoint_url=self.s3_endpoint_url,
            connections=connections,
            pipeline=pipeline,
        )

    def _start_servers(self) -> str:
        try:
            from emulator.s3 import S3Server
            from emulator.server import ThreadedEmulatorServer
        except ImportError as exc:
            raise LaunchError(f"the local backend needs the emulator package: {exc}") from exc
        try:
            if self.s3_endpoint_url is None:
                s3 = S3Server()
                s3.start()
                self._started.append(s3)
                self.s3_endpoint_url = _url_of(s3)
            # A private emulator keeps its functions and logs in a private temp dir,
            # removed on close (``mu emulator`` is the one with a lasting state dir).
            self._state_dir = tempfile.mkdtemp(prefix="mu-emulator-")
            server = ThreadedEmulatorServer(
                state_dir=self._state_dir, s3_endpoint_url=self.s3_endpoint_url,
                duplicate_rate=self._duplicate[0], duplicate_seed=self._duplicate[1],
            )
            server.start()
            self._started.append(server)
        except OSError as exc:
            raise LaunchError(f"cannot start the local emulator: {exc}") from exc
        return _url_of(server)

    def __repr__(self) -> str:
        return f"<LocalLauncher lambda={self.endpoint_url} s3={self.s3_endpoint_url}>"

    def __enter__(self) -> LocalLauncher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create_function(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        """Register the function with the emulator (see ``LambdaLauncher.create_function``)."""
        return self._lambda.create_function(spec, region)

    def function_exists(self, name: str, region: str) -> bool:
        """Whether the emulator knows ``name`` in ``region``."""
        return self._lambda.function_exists(name, region)

    def delete_function(self, name: str, region: str) -> None:
        """Delete ``name`` from the emulator; a missing one is not an error."""
        self._lambda.delete_function(name, region)

    def lambda_client(self, region: str) -> Any:
        """The boto3 Lambda client for the emulator in ``region``."""
        return self._lambda.client(region)

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        """Invoke through the emulator with the AWS launch path (``LambdaLauncher.launch``)."""
        return self._lambda.launch(spec)

    @property
    def duplicated(self) -> int:
        """Event invocations the emulator started here delivered twice (rehearsal faults)."""
        return sum(getattr(getattr(s, "registry", None), "duplicated", 0) for s in self._started)

    @property
    def last_stats(self) -> dict[str, int]:
        """Connection statistics of the last launch."""
        return self._lambda.last_stats

    def close(self) -> None:
        """Close the clients and stop, in reverse order, every server started here."""
        inner = getattr(self, "_lambda", None)
        if inner is not None:
            inner.close()
        while self._started:
            self._started.pop().stop()
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None


class LocalSite:
    """A :class:`mu.launch.Site` on this machine: the emulator and moto S3 on loopback.

    Args:
        options: ``endpoint_url``/``s3_endpoint_url`` (attach to running servers instead of
            starting them), ``host_addr``, the first of ``regions``, ``duplicate_rate`` and
            ``duplicate_seed``.

    Raises:
        LaunchError: the emulator or S3 server could not start.
    """

    name = "local"
    listen_host = "127.0.0.1"
    max_handshakes = 16
    deploys_jobs = True
    max_zipped: int | None
    default_role: str

    def __init__(self, options: SiteOptions) -> None:
        from mu.lambdaize import LOCAL_ROLE, MAX_ZIPPED

        self.options = options
        self.regions = options.regions
        self.private = options.endpoint_url is None
        self.max_zipped = MAX_ZIPPED
        self.default_role = LOCAL_ROLE
        self._launcher: LocalLauncher | None = LocalLauncher(
            endpoint_url=options.endpoint_url,
            s3_endpoint_url=options.s3_endpoint_url,
            region=options.region,
            duplicate_rate=options.duplicate_rate,
            duplicate_seed=options.duplicate_seed,
        )

    @property
    def launcher(self) -> LocalLauncher:
        if self._launcher is None:
            raise ConfigError("the local site is closed")
        return self._launcher

    def s3_client(self, region: str) -> Any:
        from mu.aws import lazy_s3

        return lazy_s3(self.launcher.s3_endpoint_url, region, LOCAL_CREDENTIALS)

    def logs_client(self, region: str) -> Any:
        # the emulator writes its functions' logs into its S3 server's CloudWatch Logs API
        from backends.logs import logs_client

        return logs_client(self.launcher.s3_endpoint_url, region, LOCAL_CREDENTIALS)

    def function_settings(self, name: str, region: str) -> FunctionSettings | None:
        # the emulator answers GetFunctionConfiguration as Lambda does
        from backends.lambda_site import function_settings

        return function_settings(self.launcher.lambda_client(region), name, region)

    def dial_back_address(self, region: str) -> str | None:
        return self.options.host_addr or LocalLauncher.host_addr

    def check_credentials(self) -> list[str]:
        return []

    def duplicated(self) -> int:
        return self.launcher.duplicated

    def close(self) -> None:
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None

    def __repr__(self) -> str:
        return f"<LocalSite {self._launcher!r}>"


def _url_of(server: Any) -> str:
    """``http://HOST:PORT`` of a started server exposing ``.url`` or ``.address``."""
    url = getattr(server, "url", None)
    if isinstance(url, str):
        return url.rstrip("/")
    host, port = server.address[:2]
    return f"http://{host}:{port}"


def emulator_parser(prog: str) -> argparse.ArgumentParser:
    """The emulator's own command-line parser, under the name ``prog``.

    Raises:
        ConfigError: the emulator package is not installed.
    """
    try:
        from emulator import cli
    except ImportError as exc:
        raise ConfigError(f"`{prog}` needs the emulator package: {exc}") from exc

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the local Lambda API emulator and its moto S3 server on 127.0.0.1.",
    )
    cli.add_arguments(parser)
    return parser


def run_emulator(args: argparse.Namespace) -> int:
    """Run the emulator in the foreground until interrupted; return the exit status."""
    from emulator import cli

    status: int = cli.run(args)
    return status
