"""The relay beside the coordinator, in a process of its own.

Theory of operation
-------------------
Every relayed byte is decrypted and encrypted again by the relay, in Python. Run as a
thread of the ``mu`` process, that work would hold the one interpreter lock the coordinator
shares with everything else there (locally the emulator and the S3 server too), and each
relayed megabyte would stall the control plane. :class:`RelayProcess` runs
:class:`mu.relay.Relay` in a child interpreter instead (``python -m mu.relay_process``) and
offers the parent what :func:`mu.runopts.run` uses of a relay: :meth:`~RelayProcess.start`,
:attr:`~RelayProcess.address`, :meth:`~RelayProcess.stop`, :meth:`~RelayProcess.stats`
and :attr:`~RelayProcess.error`.

The two talk over the child's standard streams, one JSON object a line:

* **stdin, parent to child**: the first line carries what the relay needs: the run's keys
  (PEM text: the run's private key goes through the pipe and is never written to disk),
  the token, the listen address and the logging level. Then nothing: the pipe stays open
  for as long as the relay should run. Its end of file, whether :meth:`stop` closed it or
  the parent died (a kill, a crash), stops the relay, so the child never outlives its
  parent.
* **stdout, child to parent**: ``{"bound": [host, port]}`` once listening, or
  ``{"config_error": "..."}`` when the address cannot be bound (raised in the parent as the
  same :class:`~mu.errors.ConfigError`); at the end ``{"stats": {...}, "error": ...}``: the
  relay's final statistics and what ended its loop if it was not the stop (a bug).

The child ignores SIGINT: a Ctrl-C in a terminal reaches the whole process group, and the
parent decides when the relay stops (its ``finally`` closes the pipe, and the statistics
line is still printed). Its log records go to the inherited stderr, at the parent's level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Final

from mu.errors import ConfigError, MuError
from mu.relay_core import RelayLimits, RelayStats
from mu.tls import KeySet

__all__ = ["START_TIMEOUT", "STOP_TIMEOUT", "RelayProcess"]

START_TIMEOUT: Final = 60.0
"""Seconds the child may take to start and bind."""
STOP_TIMEOUT: Final = 30.0
"""Seconds the child may take to close its connections and report, once told to stop."""

_KEY_FIELDS: Final = ("ca_cert", "server_cert", "server_key")


class RelayProcess:
    """:class:`mu.relay.Relay` in a child process (see the module docstring).

    Args:
        keys: the run's keys (only the CA and the coordinator's pair go to the child);
            None: plain TCP.
        token: the run token every hello must carry; None: any ``<run>``.
        host: the address to listen on.
        port: the port (0: a free one).
        limits: the relay's bounds (default :class:`~mu.relay_core.RelayLimits`).
    """

    def __init__(
        self,
        keys: KeySet | None,
        token: str | None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: RelayLimits | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"relay port {port} is not between 0 and 65535")
        self.host = host
        self.port = port
        self._setup: dict[str, Any] = {
            "keys": None if keys is None else {f: getattr(keys, f) for f in _KEY_FIELDS},
            "token": token,
            "host": host,
            "port": port,
            "limits": dataclasses.asdict(limits) if limits is not None else None,
            "log_level": logging.getLogger("mu").getEffectiveLevel(),
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._bound: tuple[str, int] | None = None
        self._stats = RelayStats()
        self._error: BaseException | None = None
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port).

        Raises:
            RuntimeError: the relay was not started.
        """
        if self._bound is None:
            raise RuntimeError("the relay is not started")
        return self._bound

    @property
    def error(self) -> BaseException | None:
        """What ended the relay if it was not :meth:`stop` (known once stopped)."""
        return self._error

    def stats(self) -> RelayStats:
        """The relay's statistics as it stopped (empty before :meth:`stop`)."""
        return self._stats

    def start(self) -> None:
        """Start the child and wait until it listens.

        Raises:
            ConfigError: the address cannot be bound (the message names it and why).
            MuError: the child did not start.
        """
        if self._proc is not None:
            return
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # the directory that holds mu/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = proc = subprocess.Popen(
            [sys.executable, "-m", "mu.relay_process"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):  # it died at once: the read below says so
            proc.stdin.write(json.dumps(self._setup).encode() + b"\n")
            proc.stdin.flush()
        first = _read_message(proc.stdout, START_TIMEOUT)
        if first is not None and "bound" in first:
            host, port = first["bound"]
            self._bound = (str(host), int(port))
            return
        self._end(kill=True)
        self._stopped = True
        if first is not None and "config_error" in first:
            raise ConfigError(str(first["config_error"]))
        raise MuError(f"the relay process did not start (exit status {proc.returncode})")

    def stop(self) -> None:
        """Tell the child to stop (end of its stdin), collect its final statistics and
        wait for it to exit. Idempotent."""
        if self._stopped or self._proc is None:
            self._stopped = True
            return
        self._stopped = True
        proc = self._proc
        assert proc.stdout is not None
        with contextlib.suppress(OSError):  # a broken pipe: it has gone already
            assert proc.stdin is not None
            proc.stdin.close()
        last = _read_message(proc.stdout, STOP_TIMEOUT)
        self._end(kill=last is None)
        if last is None or "stats" not in last:
            self._error = MuError(f"the relay process ended without its statistics "
                                  f"(exit status {proc.returncode})")
            return
        fields = dict(last["stats"])
        fields["reasons"] = tuple((str(k), int(v)) for k, v in fields.get("reasons", ()))
        self._stats = RelayStats(**fields)
        if last.get("error"):
            self._error = MuError(str(last["error"]))

    def _end(self, kill: bool) -> None:
        proc = self._proc
        assert proc is not None
        if kill:
            proc.kill()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> RelayProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_message(stream: IO[bytes], timeout: float) -> dict[str, Any] | None:
    """The next JSON line from the child, or None (end of file, garbage, or ``timeout``)."""
    fd = stream.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return None
            data = os.read(fd, 65536)  # the child says one line, then waits: never two
            if not data:
                return None
            line += data
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


# ------------------------------------------------------------------------------ the child


def _child() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent says when: end of stdin
    def say(message: dict[str, Any]) -> None:
        # unbuffered, and quiet if the parent has gone (killed: nobody is left to tell)
        with contextlib.suppress(OSError):
            os.write(sys.stdout.fileno(), json.dumps(message).encode() + b"\n")

    setup = json.loads(sys.stdin.buffer.readline() or b"null")
    if not isinstance(setup, dict):
        return 2  # the parent went before saying anything
    logging.basicConfig(level=int(setup.get("log_level") or logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mu.relay import Relay

    keys = KeySet(**setup["keys"], worker_cert="", worker_key="") if setup["keys"] else None
    limits = RelayLimits(**setup["limits"]) if setup.get("limits") else None
    try:
        relay = Relay(keys, setup["token"], setup["host"], int(setup["port"]), limits=limits)
        relay.start()
    except ConfigError as exc:
        say({"config_error": str(exc)})
        return 2
    say({"bound": list(relay.address)})
    while sys.stdin.buffer.read(65536):  # nothing more is said: wait for the end of file
        pass
    relay.stop()
    stats = dataclasses.asdict(relay.stats())
    error = relay.error
    say({"stats": stats, "error": f"{type(error).__name__}: {error}" if error else None})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child())
    except Exception as exc:  # a bug or a broken pipe: one line, the parent reports the rest
        print(f"mu: relay process: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
