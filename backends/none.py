"""The ``none`` backend: launch nothing; workers are started by hand with the payload.

Theory of operation
-------------------
``launch()`` writes the invocation payload (JSON: coordinator address, port, run token, CA
certificate, worker certificate and key — never the coordinator's key, which
:meth:`mu.launch.WorkerPayload.to_json` refuses) to ``payload_out`` (mode 0600; by default
``payload.json`` in a private temporary directory removed by :meth:`NoneLauncher.close`),
prints the exact commands that start a worker with it, and reports every requested
invocation as accepted: the workers are on their way, by hand. The coordinator then waits
for them as for any launch, up to its arrival timeout (``--arrival-timeout``), and fails the
actors none came for with that reason. A later launch (a retry) rewrites the same payload
and asks for that many more workers.

A worker is the function's handler run by path (see ``function/lambda_function.py``):

* in an unpacked bundle (``unzip NAME.zip`` of ``mu lambdaize``), in its directory:
  ``python3 lambda_function.py PAYLOAD``;
* in a checkout of mu (mu installed): ``python3 function/lambda_function.py PAYLOAD
  --command 'BINARY ARGS'``, the command the bundle would carry in ``mu_command.json``.

Workers find S3 through the standard AWS environment; with ``s3_endpoint_url`` the printed
commands set ``AWS_ENDPOINT_URL_S3`` to it.

:class:`NoneSite` is the :class:`~mu.launch.Site`: the coordinator's S3 client comes from the
standard AWS credential chain (:class:`~backends.lambda_site.AwsAccount`), and workers dial
back to ``--host-addr``, else to the address the coordinator listens on.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from mu.errors import ConfigError
from mu.launch import FunctionSettings, FunctionSpec, Invocation, LaunchReport, LaunchSpec
from mu.options import SiteOptions

__all__ = ["NoneLauncher", "NoneSite", "worker_commands"]


def _handler_path() -> Path:
    """The handler file of the installed mu (in a checkout: ``function/lambda_function.py``)."""
    return Path(str(resources.files("mu") / "worker" / "lambda_function.py")).resolve()


def worker_commands(
    payload: str | os.PathLike[str],
    command: str = "",
    s3_endpoint_url: str | None = None,
    python: str = sys.executable,
) -> tuple[str, str]:
    """The shell lines that start one worker by hand.

    Args:
        payload: the payload file.
        command: the function's command template, for the checkout line.
        s3_endpoint_url: where workers find S3 (``AWS_ENDPOINT_URL_S3``), if not AWS.
        python: the interpreter to name.

    Returns:
        (in an unpacked bundle, run in its directory; in a checkout of mu).

    >>> worker_commands("/tmp/p.json", "./png2y4m -o x", python="python3")[0]
    'python3 lambda_function.py /tmp/p.json'
    """
    env = f"AWS_ENDPOINT_URL_S3={shlex.quote(s3_endpoint_url)} " if s3_endpoint_url else ""
    head = f"{env}{shlex.quote(python)}"
    where = shlex.quote(os.fspath(Path(payload).resolve()))
    bundle = f"{head} lambda_function.py {where}"
    checkout = f"{head} {shlex.quote(str(_handler_path()))} {where}"
    if command:
        checkout += f" --command {shlex.quote(command)}"
    return bundle, checkout


class NoneLauncher:
    """A :class:`mu.launch.Launcher` that starts nothing and says how to start workers.

    Args:
        payload_out: where to write the payload (default: a private temporary file).
        command: the function's command template, shown in the checkout instructions.
        s3_endpoint_url: the S3 endpoint workers should use, if not AWS.
        arrival_timeout: how long the coordinator waits for the workers (shown).
        out: where the instructions go (default stderr).
    """

    name = "none"

    def __init__(
        self,
        payload_out: str | None = None,
        command: str = "",
        s3_endpoint_url: str | None = None,
        arrival_timeout: float | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.payload_out = payload_out
        self.command = command
        self.s3_endpoint_url = s3_endpoint_url
        self.arrival_timeout = arrival_timeout
        self.out = out
        self._tmpdir: str | None = None
        self._asked = 0
        self._lock = threading.Lock()

    def create_function(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        return {"FunctionName": spec.name, "Region": region}

    def function_exists(self, name: str, region: str) -> bool:
        return True

    def delete_function(self, name: str, region: str) -> None:
        return None

    def _path(self) -> Path:
        if self.payload_out:
            return Path(self.payload_out)
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="mu-payload-")
        return Path(self._tmpdir) / "payload.json"

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        now = time.monotonic()
        with self._lock:
            path = self._path()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # a file that was there keeps its mode otherwise: the key
            with os.fdopen(fd, "wb") as f:
                f.write(spec.payload)
            first = self._asked == 0
            self._asked += spec.count
            self._tell(path, spec.count, first)
        invocations = tuple(
            Invocation(i, spec.regions[i % len(spec.regions)], True, attempts=0,
                       sent_at=now, done_at=now)
            for i in range(spec.count)
        )
        return LaunchReport(invocations, now, now)

    def _tell(self, path: Path, count: int, first: bool) -> None:
        out = self.out or sys.stderr
        if not first:
            print(f"mu: backend none: {count} more worker(s) wanted (retries): start them "
                  "as before, with the same payload", file=out, flush=True)
            return
        bundle, checkout = worker_commands(path, self.command, self.s3_endpoint_url)
        wait = f" up to {self.arrival_timeout:g} s" if self.arrival_timeout else ""
        print(
            f"mu: backend none: nothing launched; the payload is in {path} (it holds the "
            f"workers' key: keep it private)\n"
            f"mu: start {count} worker(s) by hand, each with AWS credentials for S3 in its "
            f"environment, either in an unpacked bundle of the function (unzip the zip of "
            f"`mu lambdaize`), in its directory:\n"
            f"  $ {bundle}\n"
            f"mu: or in a checkout of mu:\n"
            f"  $ {checkout}\n"
            f"mu: waiting for them{wait} (--arrival-timeout)",
            file=out,
            flush=True,
        )

    def close(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


class NoneSite:
    """A :class:`mu.launch.Site` that launches nothing: workers are started by hand.

    Args:
        options: ``payload_out``, ``worker_command``, ``s3_endpoint_url``,
            ``arrival_timeout`` (for the instructions) and ``host_addr``.
    """

    name = "none"
    listen_host = "127.0.0.1"
    max_handshakes = 16
    deploys_jobs = False
    private = False
    default_role = ""
    max_zipped: int | None = None

    def __init__(self, options: SiteOptions, out: TextIO | None = None) -> None:
        from backends.lambda_site import AwsAccount

        self.options = options
        self.regions = options.regions
        self.account = AwsAccount("the coordinator reads the input frames in S3")
        self.launcher = NoneLauncher(
            payload_out=options.payload_out,
            command=options.worker_command,
            s3_endpoint_url=options.s3_endpoint_url,
            arrival_timeout=options.arrival_timeout,
            out=out,
        )

    def s3_client(self, region: str) -> Any:
        return self.account.s3_client(self.options.s3_endpoint_url, region)

    def logs_client(self, region: str) -> Any:
        return None  # workers started by hand log nowhere mu can read

    def function_settings(self, name: str, region: str) -> FunctionSettings | None:
        raise ConfigError("backend none: workers are started by hand, with no Lambda "
                          "function's memory or timeout")

    def dial_back_address(self, region: str) -> str | None:
        return self.options.host_addr

    def check_credentials(self) -> list[str]:
        return self.account.problems()

    def duplicated(self) -> int:
        return 0

    def close(self) -> None:
        self.launcher.close()
