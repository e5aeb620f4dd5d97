"""The coordinator's command-line flags, shared by every job subcommand.

:func:`add_run_arguments` adds the 2016 server flags (``-t -D -O -P -m -c -s -k``, ``-X``,
``-N``) and mu's own; :func:`keys_from_args` and :func:`run_config_from_args` turn them into a
:class:`~mu.tls.KeySet` and a :class:`~mu.config.RunConfig`; :func:`execute` runs a
coordinator with the live view, the run record (``-O``), profiling (``-P``) and the final
report that those flags ask for.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mu.config import DEFAULT_PORT, RunConfig
from mu.errors import ConfigError
from mu.faults import FaultSpec
from mu.faults import parse as parse_faults

if TYPE_CHECKING:  # the coordinator and TLS (pyOpenSSL) load only when a run starts
    from mu.coordinator import Coordinator, RunResult
    from mu.tls import KeySet

__all__ = ["add_run_arguments", "execute", "keys_from_args", "parse_actors", "run_config_from_args"]


def parse_actors(text: str) -> list[int]:
    """Parse ``-N a,b,c`` (ranges ``a-b`` allowed)."""
    actors: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise argparse.ArgumentTypeError(f"{part!r} is not an actor number or range a-b")
        actors.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return actors


def _faults(text: str) -> FaultSpec:
    try:
        return parse_faults(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the coordinator flags to ``parser``."""
    g = parser.add_argument_group("coordinator")
    g.add_argument(
        "-t",
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"listen on this port ({DEFAULT_PORT}; 0 picks a free one)",
    )
    g.add_argument(
        "--host",
        default=None,
        help="listen address (default 127.0.0.1 for local runs, 0.0.0.0 for AWS)",
    )
    g.add_argument("-D", "--debug", action="store_true", help="debug logging")
    g.add_argument("-O", "--record", metavar="FILE", help="write the run record (JSON lines)")
    g.add_argument("-P", "--profile", metavar="FILE", help="write cProfile stats")
    g.add_argument(
        "-m",
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="fail a worker that takes longer than this",
    )
    g.add_argument(
        "--run-deadline", type=float, metavar="SECONDS", help="end the whole run after this long"
    )
    g.add_argument(
        "-X", "--extra", type=int, default=0, metavar="N", help="launch N spare workers (0)"
    )
    g.add_argument(
        "--retries", type=int, default=2, metavar="K",
        help="give an actor whose attempt failed for a reason that can be transient (lost "
        "worker, timeout, S3 5xx, throttling) to a new worker, up to K times (2)",
    )
    g.add_argument(
        "--arrival-timeout", type=float, default=300.0, metavar="SECONDS",
        help="fail actors whose launched workers have not connected this long after the "
        "launch (300)",
    )
    g.add_argument(
        "--speculate", type=float, nargs="?", const=3.0, default=None, metavar="FACTOR",
        help="launch a backup worker for an actor whose current state has lasted FACTOR "
        "times (3) that state's median among finished workers; the first to finish wins",
    )
    g.add_argument(
        "--max-handshakes", type=int, default=None, metavar="N",
        help="TLS handshakes in progress at once (16; 128 with --backend lambda, where each "
        "waits a round trip for its worker)",
    )
    g.add_argument(
        "--resume", action="store_true",
        help="skip actors whose output already exists complete (size and SHA-256 as "
        "recorded at upload); run only the rest",
    )
    g.add_argument(
        "--faults", type=_faults, metavar="SPEC",
        help="rehearsals: inject faults, e.g. crash=0.1,hang=0.02,drop=0.05,s3-error=0.02,"
        "duplicate=0.05,seed=7 (a hang needs -m to end it; duplicate: local backend only)",
    )
    g.add_argument(
        "-N", "--actors", type=parse_actors, metavar="A,B,C", help="run exactly these actor numbers"
    )
    g.add_argument(
        "--no-tls",
        action="store_true",
        help="plain TCP between coordinator and workers (debugging only)",
    )
    g.add_argument(
        "--payload-out", metavar="FILE",
        help="backend none: write the invocation payload here (default: a private temporary "
        "file, removed when the run ends); the run prints how to start workers with it",
    )
    k = parser.add_argument_group("keys (default: ephemeral keys made for this run)")
    k.add_argument("-c", "--ca-cert", metavar="FILE", help="CA certificate (env CA_CERT)")
    k.add_argument(
        "-s", "--server-cert", metavar="FILE", help="coordinator certificate (env SRV_CERT)"
    )
    k.add_argument("-k", "--server-key", metavar="FILE", help="coordinator key (env SRV_KEY)")
    k.add_argument(
        "--worker-cert", metavar="FILE",
        help="worker certificate (env WORKER_CERT; default with -c/-s/-k: worker_cert.pem "
        "beside -s, else one made for the run from ca_key.pem beside -c)",
    )
    k.add_argument("--worker-key", metavar="FILE", help="worker key (env WORKER_KEY)")


def keys_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> KeySet | None:
    """The run's keys: from flags, else the 2016 environment variables, else ephemeral.

    Given the coordinator's identity (``-c/-s/-k``) without a worker pair, the workers get
    ``worker_cert.pem``/``worker_key.pem`` found beside the server certificate (where
    ``mu genkeys`` writes them), else a certificate minted for this run from ``ca_key.pem``
    beside the CA certificate; the coordinator's own key never serves as theirs.

    Returns None for ``--no-tls``.

    Raises:
        ConfigError: a key file is missing or unreadable, only some were given, or there
            is no worker pair and no CA key to make one.
    """
    if getattr(args, "no_tls", False):
        return None
    ca = args.ca_cert or environ.get("CA_CERT")
    cert = args.server_cert or environ.get("SRV_CERT")
    key = args.server_key or environ.get("SRV_KEY")
    wcert = args.worker_cert or environ.get("WORKER_CERT")
    wkey = args.worker_key or environ.get("WORKER_KEY")
    given = {"-c/CA_CERT": ca, "-s/SRV_CERT": cert, "-k/SRV_KEY": key}
    if not any(given.values()):
        from mu.tls import generate_keys

        return generate_keys(days=2)
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ConfigError(f"keys given in part: also give {', '.join(missing)}")
    assert ca and cert and key
    from mu.tls import KEY_FILES, KeySet, mint_worker

    if bool(wcert) != bool(wkey):
        raise ConfigError("give both --worker-cert and --worker-key (WORKER_CERT/WORKER_KEY), "
                          "or neither")
    if wcert:
        return KeySet.load(ca, cert, key, wcert, wkey)
    keys = KeySet.load(ca, cert, key)  # names every unreadable file before anything else
    beside = Path(cert).parent
    found = beside / KEY_FILES["worker_cert"], beside / KEY_FILES["worker_key"]
    if all(p.is_file() for p in found):
        return KeySet.load(ca, cert, key, *found)
    ca_key = Path(ca).parent / KEY_FILES["ca_key"]
    if not ca_key.is_file():
        raise ConfigError(
            f"no worker certificate for the payload (the coordinator's key never goes "
            f"into it): found neither {found[0]} + {found[1].name} beside the server "
            f"certificate nor {ca_key} to make one; pass --worker-cert/--worker-key "
            f"(WORKER_CERT/WORKER_KEY), or make all six key files with `mu genkeys`"
        )
    try:
        ca_key_pem = ca_key.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read CA key {str(ca_key)!r}: {exc.strerror}") from exc
    worker_cert, worker_key = mint_worker(keys.ca_cert, ca_key_pem)
    return dataclasses.replace(keys, worker_cert=worker_cert, worker_key=worker_key)


def run_config_from_args(args: argparse.Namespace, num_actors: int, offset: int) -> RunConfig:
    """The RunConfig the flags describe."""
    remote = getattr(args, "backend", "local") == "lambda"
    host = args.host or ("0.0.0.0" if remote else "127.0.0.1")
    handshakes = getattr(args, "max_handshakes", None) or (128 if remote else 16)
    return RunConfig(
        num_actors=num_actors,
        offset=offset,
        actors=args.actors,
        extra_workers=args.extra,
        host=host,
        port=args.port,
        worker_deadline=args.deadline,
        run_deadline=args.run_deadline,
        tls=not args.no_tls,
        retries=args.retries,
        arrival_timeout=args.arrival_timeout,
        faults=getattr(args, "faults", None),
        speculate=getattr(args, "speculate", None),
        max_handshakes=handshakes,
    )


def execute(
    coordinator: Coordinator, args: argparse.Namespace, out: TextIO | None = None
) -> RunResult:
    """Run ``coordinator`` with the live view, ``-P`` profiling, ``-O`` record and the report."""
    from mu.report import LiveStatus, final_report

    stream = out or sys.stderr
    if not coordinator.config.tls:
        print(
            "mu: WARNING: --no-tls: workers and coordinator talk in the clear, and anyone "
            "who can reach the port can pose as a worker",
            file=stream,
        )
    live = LiveStatus(stream, coordinator.config.actor_numbers())
    coordinator.status = live.update
    try:
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            result = profiler.runcall(coordinator.run)
            profiler.dump_stats(args.profile)
        else:
            result = coordinator.run()
    finally:
        live.close()
    if args.record:
        result.write_record(args.record)
    final_report(result, stream)
    return result
