"""Where the time of a many-worker ``mu encode`` goes, on the local backend.

``--workers`` workers (default 100) each encode ``--f`` PNG frames (default 2) of
``--size`` ``mu.frames`` content: the whole path of ``mu encode`` with PNG input (each worker
retrieves its frames, runs png2y4m on each, vpxenc on its chunk, uploads its IVF chunk), then
the stitch. Reported: the site's start-up, the whole job (upload of the inputs, preflight,
the coordinator's run, download and stitch), the coordinator's run alone, the mean time a
worker spent in each state, and how far apart the workers' first states began (0: the first
worker's hello). Prints one JSON object, then a summary line.

Usage: python bench/encode_workers.py [--workers 100] [--f 2] [--size 320x180]
       [--cpu-used 8]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends import get_backend  # noqa: E402
from mu.apps.encode_run import EncodeJob, EncodeOptions  # noqa: E402
from mu.demo import time_per_state  # noqa: E402
from mu.frames import parse_size, write_frames  # noqa: E402
from mu.options import RunOptions  # noqa: E402
from mu.runopts import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--f", type=int, default=2)
    parser.add_argument("--size", default="320x180")
    parser.add_argument("--cpu-used", type=int, default=8)
    args = parser.parse_args()
    width, height = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="mu-encode-workers-") as tmp:
        work = Path(tmp)
        write_frames(work / "frames", args.workers * args.f, width, height, depth=8)
        started = time.monotonic()
        site = get_backend("local")
        try:
            site_s = time.monotonic() - started
            log = io.StringIO()
            options = EncodeOptions(workers=args.workers, frames=args.f, video="v",
                                    bucket="bench", informat="png16",
                                    input_dir=str(work / "frames"), output_dir=str(work / "out"),
                                    cpu_used=args.cpu_used)
            began = time.monotonic()
            done = run(EncodeJob(options), RunOptions(port=0), site, out=log)
            whole = time.monotonic() - began
        finally:
            site.close()
        if done.exit_status != 0 or done.run is None:
            print(log.getvalue(), file=sys.stderr)
            return 1
        result = done.run
        coordinator_s = result.wall
        states = time_per_state(result)
        firsts = [a.timestamps[0][0] for a in result.actors if a.timestamps]
        lasts = [a.timestamps[-1][0] for a in result.actors if a.timestamps]
        arrivals = [t - min(firsts) for t in firsts]
        row = {
            "workers": args.workers, "frames_per_worker": args.f, "size": args.size,
            "site_start_s": round(site_s, 2), "job_s": round(whole, 2),
            "coordinator_run_s": round(coordinator_s, 2),
            "first_to_last_worker_s": round(max(lasts) - min(firsts), 2),
            "mean_state_s": {k: round(v, 3) for k, v in states.items()},
            "first_state_entered_s": (
                {"median": round(statistics.median(arrivals), 2), "max": round(max(arrivals), 2)}
                if arrivals else None),
            "report": [line for line in log.getvalue().splitlines() if line.startswith(
                ("uploaded", "mu: ", "downloaded", "stitched"))],
        }
    print(json.dumps(row), flush=True)
    print(f"summary: {args.workers} workers x {args.f} frames: site {site_s:.1f} s, job "
          f"{whole:.1f} s; mean per state " + ", ".join(
              f"{k} {v:.2f} s" for k, v in states.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
