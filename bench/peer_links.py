"""CPU per byte of the worker's side of a link (:class:`mu.worker.peer.Links`).

``--pairs`` pairs of worker processes (default 1) each open a link through the relay (in its
own process, :class:`mu.relay_process.RelayProcess`, with mutual TLS as in a run), send a
file of ``--size`` bytes (default 6,220,800: two 1080p 4:2:0 frames, a denoise halo at
r = 2) while receiving their partner's, close the link, and do it again ``--files`` times
(default 10). Each worker's CPU (user + system, all its threads, from ``getrusage``) is
taken over its transfers. Reported: milliseconds of worker CPU per megabyte sent and
received (one MB each way counts one), the workers' CPU split into user and system, and the
wall time of the slowest. With ``--profile`` the first worker's link thread and sending
thread are profiled by thread CPU time (``cProfile`` with ``time.thread_time``) and the top
functions printed.

Usage: python bench/peer_links.py [--pairs 1] [--files 10] [--size 6220800] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import resource
import sys
import tempfile
import threading
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mu.relay_process import RelayProcess  # noqa: E402
from mu.tls import KeySet, generate_keys  # noqa: E402
from mu.worker.peer import Links  # noqa: E402
from mu.worker.session import client_context  # noqa: E402

TOKEN = "bench"


def _top(profile: cProfile.Profile, title: str) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(8)
    return f"--- {title}\n" + "\n".join(line for line in out.getvalue().splitlines()
                                       if line.strip())


def worker(keys: KeySet, relay: str, me: int, partner: int, args: argparse.Namespace,
           profile: bool, results: Queue[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory(prefix="mu-peer-links-") as tmp:
        event = {"cacert": keys.ca_cert, "wrkcrt": keys.worker_cert, "wrkkey": keys.worker_key}
        links = Links(tmp, lambda _message: None, client_context(event, tmp), TOKEN, relay)
        source = os.path.join(tmp, "source")
        with open(source, "wb") as handle:
            handle.write(os.urandom(args.size))
        link_profile = cProfile.Profile(time.thread_time) if profile else None
        send_profile = cProfile.Profile(time.thread_time) if profile else None
        if link_profile is not None:
            serve = links._serve

            def profiled() -> None:
                link_profile.runcall(serve)
            links._serve = profiled  # type: ignore[method-assign]
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        for i in range(args.files):
            name = f"l{i}"
            # a fresh pair of <me> numbers per file: the relay sees a new link each time
            links.open(name, None, 0, me + 2 * args.pairs * i, partner + 2 * args.pairs * i)
            sent: list[str] = []

            def send(name: str = name, sent: list[str] = sent) -> None:
                if send_profile is not None:
                    sent.append(send_profile.runcall(links.send_file, name, source))
                else:
                    sent.append(links.send_file(name, source))
            sender = threading.Thread(target=send)
            sender.start()
            got = links.recv_file(name, os.path.join(tmp, "got"), 120)
            sender.join()
            if not got.startswith("OK:RECV") or not sent[0].startswith("OK:SEND"):
                raise SystemExit(f"worker {me}: {got} / {sent}")
            links.close_link(name)
        after = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.monotonic() - start
        links.close()
        result: dict[str, Any] = {"user": after.ru_utime - before.ru_utime,
                                  "system": after.ru_stime - before.ru_stime, "wall": wall}
        if link_profile is not None and send_profile is not None:
            result["profile"] = (_top(link_profile, "link thread (thread CPU)") + "\n"
                                 + _top(send_profile, "sending thread (thread CPU)"))
        results.put(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--size", type=int, default=6_220_800)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    keys = generate_keys(days=1)
    fork = multiprocessing.get_context("fork")
    results: Queue[dict[str, Any]] = fork.Queue()
    with RelayProcess(keys, TOKEN) as relay:
        host, port = relay.address
        address = f"{host}:{port}"
        procs = [fork.Process(target=worker, args=(keys, address, me, partner, args,
                                                   args.profile and me == 0, results))
                 for k in range(args.pairs)
                 for me, partner in ((2 * k, 2 * k + 1), (2 * k + 1, 2 * k))]
        for proc in procs:
            proc.start()
        done = [results.get() for _ in procs]
        for proc in procs:
            proc.join()
    for result in done:
        if "profile" in result:
            print(result.pop("profile"))
    megabytes = args.size * args.files / 1e6  # each way, per worker
    user = sum(r["user"] for r in done)
    system = sum(r["system"] for r in done)
    row = {"workers": len(done), "files": args.files, "size": args.size,
           "ms_cpu_per_mb_each_way": round(1000 * (user + system) / len(done) / megabytes, 2),
           "user_s": round(user, 2), "system_s": round(system, 2),
           "wall_s": round(max(r["wall"] for r in done), 2), "relay": relay.stats().line()}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
