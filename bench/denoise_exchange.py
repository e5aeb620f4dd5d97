"""What the halo exchange adds to a ``mu denoise`` run, on the local backend.

``--workers`` workers (default 16) each filter one Y4M chunk of ``--f`` frames (default 4)
of ``--size`` (default 1920x1080, 4:2:0, random samples) with ``--radius`` (default 2): the
whole path of ``mu denoise`` (each worker retrieves its chunk, cuts its edge frames, trades
them with its neighbours through the relay with TLS on both legs, filters, uploads). The
same chunks are then run again with ``--radius 0`` (no halos, no exchange: the filter
copies) for comparison, both after a first radius-0 run that uploads the chunks and warms
the execution environments up. Reported: for each run the coordinator's wall time; for the
radius-R run, each worker's time in the exchange (from entering ``ExchangeState`` to
entering ``FilterState``: links, sends, waits, receives) as a share of the run's wall
time (median and worst), split per side into opening the link and sending, and receiving
(which includes waiting for a neighbour that started later), and the wall time the exchange run took beyond the radius-0 run.
The relay's statistics are kept too. Prints one JSON object, then a summary line.

Usage: python bench/denoise_exchange.py [--workers 16] [--f 4] [--size 1920x1080]
       [--radius 2]
"""

from __future__ import annotations

import argparse
import io
import json
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


def one_run(site: Site, options: DenoiseOptions) -> tuple[Any, str]:
    log = io.StringIO()
    done = run(DenoiseJob(options), RunOptions(port=0, relay_port=0), site, out=log)
    if done.exit_status != 0 or done.run is None:
        print(log.getvalue(), file=sys.stderr)
        raise SystemExit(1)
    return done, log.getvalue()


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
    args = parser.parse_args()
    width, height = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="mu-denoise-exchange-") as tmp:
        work = Path(tmp)
        write_chunks(work / "in", args.workers, args.f, width, height)
        site = get_backend("local")
        try:
            common = {"workers": args.workers, "frames": args.f, "video": "v", "bucket": "bench"}
            # a first run uploads the chunks and warms the execution environments up, so
            # that neither measured run pays the cold starts
            one_run(site, DenoiseOptions(**common, radius=0, input_dir=str(work / "in")))
            halos, _ = one_run(site, DenoiseOptions(**common, radius=args.radius))
            plain, _ = one_run(site, DenoiseOptions(**common, radius=0))
        finally:
            site.close()
    wall = halos.run.wall
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
        "relay": stats.line() if stats else None,
    }
    print(json.dumps(row), flush=True)
    print(f"summary: {args.workers} workers x {args.f} frames {args.size} r={args.radius}: "
          f"run {wall:.2f} s (r=0: {plain.run.wall:.2f} s); exchange per worker median "
          f"{statistics.median(spent):.2f} s, max {max(spent):.2f} s = "
          f"{100 * max(shares):.0f} % of the run's wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
