"""Local ``mu png2y4m`` runs: N workers x F frames of 320x180 on the emulator, wall and CPU.

The real command (local backend: the emulator, moto S3, real workers over mutual TLS, the
static binary) converts ``--workers`` x ``--frames`` frames. The run time is the
coordinator's own (the last actor's end in the run record, ``-O``); the command's wall time
adds the emulator's and moto's start-up. CPU is the command's and all its descendants'
(user + system), per worker. Runs of the sizes given alternate, ``--repeat`` times.

Prints one JSON line per run (stderr), one JSON object, then a summary line.

    python bench/emulator_png2y4m.py [--sizes 100x2,300x1] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cpu_breakdown import Breakdown

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "function" / "png2y4m" / "png2y4m"


def one_run(workers: int, frames: int, inputs: Path, work: Path, n: int) -> dict[str, Any]:
    record = work / f"run{n}.jsonl"
    argv = [sys.executable, "-m", "mu.cli", "png2y4m", "--binary", str(BINARY),
            "-n", str(workers), "-f", str(frames), "-v", f"emu{n}", "-b", f"bench-emu-{n}",
            "--input-dir", str(inputs), "-O", str(record)]
    with open(work / f"run{n}.log", "wb") as log:
        got = Breakdown().run(argv, cwd=work, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              stdout=log, stderr=subprocess.STDOUT)
    status, wall, cpu = got["exit"], got["wall_s"], got["cpu_s"]
    rows = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() \
        else []
    done = {r["actor"] for r in rows if r["ok"]}
    run = max((t for r in rows for t, _ in r["timestamps"]), default=float("nan"))
    return {"workers": workers, "frames": frames, "exit": status, "actors_done": len(done),
            "run_s": round(run, 3), "command_s": round(wall, 3), "cpu_s": round(cpu, 2),
            "cpu_ms_per_worker": round(cpu / workers * 1000, 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "machine_busy_share": round(got["machine_busy_share"], 3),
            "cpu_ms_per_worker_by_part": {k: round(v / workers * 1000, 1)
                                          for k, v in got["parts"].items()},
            "processes": got["processes"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100x2,300x1", help="WORKERSxFRAMES, comma-separated")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    subprocess.run(["make", "-s", "-C", str(BINARY.parent)], check=True)
    sys.path.insert(0, str(ROOT))
    from mu.frames import write_frames

    runs: list[dict[str, Any]] = []
    keep = os.environ.get("MU_BENCH_KEEP")  # a directory to keep the logs in
    with tempfile.TemporaryDirectory(prefix="mu-bench-emu-png2y4m-") as tmp:
        work = Path(keep or tmp)
        for workers, frames in sizes:  # a folder per size: mu uploads all of its folder
            write_frames(work / f"frames-{workers}x{frames}", workers * frames, 320, 180)
        for _ in range(args.repeat):
            for workers, frames in sizes:
                inputs = work / f"frames-{workers}x{frames}"
                runs.append(one_run(workers, frames, inputs, work, len(runs)))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    summary = {}
    for workers, frames in sizes:
        mine = [r for r in runs if (r["workers"], r["frames"]) == (workers, frames)]
        summary[f"{workers}x{frames}"] = {
            "run_s": statistics.median(r["run_s"] for r in mine),
            "command_s": statistics.median(r["command_s"] for r in mine),
            "cpu_ms_per_worker": statistics.median(r["cpu_ms_per_worker"] for r in mine),
            "all_done": all(r["exit"] == 0 and r["actors_done"] == workers for r in mine)}
    print(json.dumps({"runs": runs, "sizes": summary}))
    print("emulator png2y4m: " + "; ".join(
        f"{k}: run {v['run_s']:.2f} s, command {v['command_s']:.2f} s, "
        f"{v['cpu_ms_per_worker']:.0f} CPU-ms/worker, all done {v['all_done']}"
        for k, v in summary.items()))
    return 0 if all(v["all_done"] for v in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
