"""What the halo exchange adds to a ``mu denoise`` run, on the local backend.

``--workers`` workers (default 16) each filter one Y4M chunk of ``--f`` frames (default 4)
of ``--size`` (default 1920x1080, 4:2:0, random samples) with ``--radius`` (default 2): the
whole path of ``mu denoise`` (each worker retrieves its chunk, cuts its edge frames, trades
them with its neighbours through the relay with TLS on both legs, filters, uploads). The
same chunks are then run again with ``--radius 0`` (no halos, no exchange: the filter
copies) for comparison, both after a first radius-0 run that uploads the chunks and warms
the execution environments up and a first radius-R run, so that each measured run writes
its outputs over those of a run like it: the local S3 server (in this process) spools an
object of more than about 5 MB to a file, and on this guest writing new keys' files cost
several times the CPU of writing over old ones, whose pages had just been freed (with new
keys for the radius-R run only, 1 CPU-s more in this process at 32 workers: the S3
server's, not the exchange's). Reported: for each run the coordinator's wall time; for the
radius-R run, each worker's time in the exchange (from entering ``ExchangeState`` to
entering ``FilterState``: links, sends, waits, receives) as a share of the run's wall
time (median and worst), split per side into opening the link and sending, and receiving
(which includes waiting for a neighbour that started later), and the wall time the
exchange run took beyond the radius-0 run. Each run's CPU-seconds come from /proc, by
where (:func:`tree_cpu`: this process, the relay's process, the execution environments).
The relay's statistics are kept too; ``--timeline FILE`` writes each actor's state
timestamps of the radius-R run. Prints one JSON object, then a summary line.

Usage: python bench/denoise_exchange.py [--workers 16] [--f 4] [--size 1920x1080]
       [--radius 2] [--timeline FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends import get_backend  # noqa: E402
from mu.apps.denoise_run import DenoiseJob, DenoiseOptions  # noqa: E402
from mu.frames import parse_size  # noqa: E402
from mu.launch import Site  # noqa: E402
from mu.options import RunOptions  # noqa: E402
from mu.runopts import run  # noqa: E402
from mu.y4m import Video, chroma_size, write_y4m  # noqa: E402


def write_chunks(directory: Path, workers: int, frames: int, width: int, height: int) -> None:
    rng = np.random.default_rng(7)
    cw, ch = chroma_size(width, height, "420")
    directory.mkdir(parents=True)
    for chunk in range(workers):
        video = Video(width, height)
        for _ in range(frames):
            video.frames.append((rng.integers(0, 256, (height, width), dtype=np.uint8),
                                 rng.integers(0, 256, (ch, cw), dtype=np.uint8),
                                 rng.integers(0, 256, (ch, cw), dtype=np.uint8)))
        write_y4m(directory / f"{chunk:08d}.y4m", video)


def tree_cpu() -> dict[str, float]:
    """CPU-seconds used so far by this process and its descendants, live or reaped, by
    where: ``mu`` this process (the coordinator, and the threads of whatever runs in it),
    ``reaped`` what its children that ended used (the relay's process ends with each run),
    ``workers`` the emulator's execution environments with what they ran, ``other`` the
    rest (an S3 server in its own process...); ``total`` all of it."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        # utime stime, and cutime cstime (what its reaped children used)
        used[int(entry)] = (int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    me = os.getpid()
    where = {me: "mu"}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in where and pid not in where:
                kind = where[ppid]
                if kind == "mu":
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        cmdline = b""
                    kind = "workers" if b"emulator.environment" in cmdline else "other"
                where[pid] = kind
                grew = True
    out = dict.fromkeys(("mu", "reaped", "workers", "other"), 0.0)
    for pid, kind in where.items():
        own, reaped = used.get(pid, (0, 0))
        out[kind] += own / tick
        out["reaped" if pid == me else kind] += reaped / tick
    out["total"] = sum(out.values())
    return out


def one_run(site: Site, options: DenoiseOptions) -> tuple[Any, dict[str, float]]:
    """The run's result and the CPU-seconds it took (:func:`tree_cpu`)."""
    log = io.StringIO()
    before = tree_cpu()
    done = run(DenoiseJob(options), RunOptions(port=0, relay_port=0), site, out=log)
    after = tree_cpu()
    cpu = {k: round(after[k] - before[k], 2) for k in after}
    if done.exit_status != 0 or done.run is None:
        print(log.getvalue(), file=sys.stderr)
        raise SystemExit(1)
    return done, cpu


def exchange_seconds(timestamps: list[tuple[float, str]]) -> float:
    names = [name for _, name in timestamps]
    start = timestamps[names.index("ExchangeState")][0]
    stop = timestamps[names.index("FilterState")][0]
    return stop - start


def side_seconds(timestamps: list[tuple[float, str]], first: str, then: tuple[str, ...]
                 ) -> list[float]:
    """For each side, the time from entering its ``first`` state to entering the first of
    its ``then`` states (e.g. ``Send`` to ``Recv``: opening the link and sending)."""
    spans = []
    for side in ("Left", "Right"):
        start = next((t for t, n in timestamps if n == f"{side}{first}State"), None)
        stop = next((t for t, n in timestamps if n in {f"{side}{x}State" for x in then}), None)
        if start is not None and stop is not None:
            spans.append(stop - start)
    return spans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--f", type=int, default=4)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--timeline", metavar="FILE",
                        help="also write each actor's state timestamps of the radius-R run")
    args = parser.parse_args()
    width, height = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="mu-denoise-exchange-") as tmp:
        work = Path(tmp)
        write_chunks(work / "in", args.workers, args.f, width, height)
        site = get_backend("local")
        try:
            common = {"workers": args.workers, "frames": args.f, "video": "v", "bucket": "bench"}
            # a first run uploads the chunks and warms the execution environments up, so
            # that neither measured run pays the cold starts; a second writes the radius-R
            # outputs once, so that both measured runs overwrite their outputs
            one_run(site, DenoiseOptions(**common, radius=0, input_dir=str(work / "in")))
            one_run(site, DenoiseOptions(**common, radius=args.radius))
            halos, halos_cpu = one_run(site, DenoiseOptions(**common, radius=args.radius))
            plain, plain_cpu = one_run(site, DenoiseOptions(**common, radius=0))
        finally:
            site.close()
    wall = halos.run.wall
    if args.timeline:
        Path(args.timeline).write_text(json.dumps(
            {a.actor: list(a.timestamps) for a in halos.run.actors}))
    spent = [exchange_seconds(list(a.timestamps)) for a in halos.run.actors]
    shares = [s / wall for s in spent]
    sending = [x for a in halos.run.actors for x in side_seconds(list(a.timestamps), "Send",
                                                                 ("Recv", "Fetch"))]
    waiting = [x for a in halos.run.actors for x in side_seconds(list(a.timestamps), "Recv",
                                                                 ("Done", "Fetch"))]
    stats = halos.relay
    row = {
        "workers": args.workers, "frames_per_worker": args.f, "size": args.size,
        "radius": args.radius, "halo_bytes": stats.bytes if stats else None,
        "run_s": round(wall, 3), "run_radius0_s": round(plain.run.wall, 3),
        "exchange_s": {"median": round(statistics.median(spent), 3),
                       "max": round(max(spent), 3)},
        "per_side_s": {"link_and_send_median": round(statistics.median(sending), 3),
                       "recv_median": round(statistics.median(waiting), 3),
                       "recv_max": round(max(waiting), 3)},
        "exchange_share_of_run": {"median": round(statistics.median(shares), 3),
                                  "max": round(max(shares), 3)},
        "added_over_radius0_s": round(wall - plain.run.wall, 3),
        "cpu_s": halos_cpu, "cpu_radius0_s": plain_cpu,
        "relay": stats.line() if stats else None,
    }
    print(json.dumps(row), flush=True)
    print(f"summary: {args.workers} workers x {args.f} frames {args.size} r={args.radius}: "
          f"run {wall:.2f} s (r=0: {plain.run.wall:.2f} s); exchange per worker median "
          f"{statistics.median(spent):.2f} s, max {max(spent):.2f} s = "
          f"{100 * max(shares):.0f} % of the run's wall time (median "
          f"{100 * statistics.median(shares):.0f} %); CPU-s "
          + " ".join(f"{k} {v:.1f} ({plain_cpu[k]:.1f})" for k, v in halos_cpu.items())
          + " (r=0 in brackets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
