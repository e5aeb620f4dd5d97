"""Benchmark of the denoise binary against the memory-bound floor, per 1080p 8-bit 4:2:0 frame.

Writes one chunk of ``--frames`` 1920x1080 C420jpeg frames (a moving gradient with noise; the
filter's cost does not depend on content) and ``r`` frames before and after it, then measures
in one run, interleaved round by round so a slow stretch of a shared machine hits all alike:

- ``denoise``: ``denoise -r R -o OUT CHUNK`` (the video's first and last chunk: edge frames
  repeated), the whole process: start-up, reading the Y4M, filtering, writing the Y4M;
- ``denoise_neighbours``: the same with ``-p PREV -n NEXT`` (a middle chunk, as a worker runs
  it; the neighbours' frames are read too);
- ``floor``: bench/denoise_floor.c (compiled here with the binary's flags) streaming the same
  frames through the same window and per output frame running a plain loop that only reads
  the 2R+1 frames and writes one (their bitwise OR), with the same file reads and writes; its
  ``floor_loop`` figure is that loop alone (timed inside the program, no I/O);
- ``naive``: the same program with the straightforward per-sample filter (a loop over the
  weights for each sample, divided by W); its output must equal the binary's byte for byte.

Wall time and CPU time (user + system of the child) are the least over ``--rounds`` runs,
divided by the frame count. The ratio asked of the binary is ``denoise`` / ``floor`` (target:
at most 1.5). Prints one JSON object, then a one-line summary.

    python3 bench/denoise_filter.py [--frames N] [--radius R] [--rounds K] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mu.y4m import Video, write_y4m  # noqa: E402

BINARY = ROOT / "function" / "denoise" / "denoise"
FLOOR_SOURCE = ROOT / "bench" / "denoise_floor.c"
WIDTH, HEIGHT = 1920, 1080


def make_video(count: int, start: int, seed: int) -> Video:
    """``count`` frames of a gradient drifting one sample per frame, plus noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(start, start + count):
        planes = []
        for h, w in ((HEIGHT, WIDTH), (HEIGHT // 2, WIDTH // 2), (HEIGHT // 2, WIDTH // 2)):
            ramp = (np.arange(w, dtype=np.int32)[None, :] + np.arange(h)[:, None] + t) % 220
            noise = rng.integers(-12, 13, (h, w))
            planes.append(np.clip(ramp + 16 + noise, 0, 255).astype(np.uint8))
        frames.append((planes[0], planes[1], planes[2]))
    return Video(WIDTH, HEIGHT, (25, 1), (1, 1), "420", frames)


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Run argv; return (wall seconds, CPU seconds of the child, its stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{argv[0]} failed ({code}): {err.strip()}")
    return wall, usage.ru_utime + usage.ru_stime, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=48, help="frames in the chunk (48)")
    parser.add_argument("--radius", type=int, default=2, help="the filter's radius (2)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each program (5)")
    parser.add_argument("--quick", action="store_true", help="12 frames, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.rounds = 12, 3
    n, r = args.frames, args.radius
    subprocess.run(["make", "-s", "-C", str(BINARY.parent)], check=True)
    results: dict[str, Any] = {
        "size": f"{WIDTH}x{HEIGHT}",
        "chroma": "420",
        "radius": r,
        "frames": n,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="mu-bench-denoise-") as tmpdir:
        tmp = Path(tmpdir)
        floor = tmp / "denoise_floor"
        # The binary's optimisation flags (function/denoise/Makefile), dynamic link.
        flags = ["-O2", "-ftree-vectorize", "-fvect-cost-model=dynamic", "-std=gnu11"]
        subprocess.run(["cc", *flags, "-o", str(floor), str(FLOOR_SOURCE)], check=True)
        chunk, prev, nxt = tmp / "chunk.y4m", tmp / "prev.y4m", tmp / "next.y4m"
        write_y4m(chunk, make_video(n, 0, 1))
        write_y4m(prev, make_video(r, -r, 2))
        write_y4m(nxt, make_video(r, n, 3))
        out = {name: tmp / f"{name}.y4m" for name in ("denoise", "neighbours", "floor", "naive")}
        programs: dict[str, list[str]] = {
            "denoise": [
                str(BINARY),
                "--stats",
                "-r",
                str(r),
                "-o",
                str(out["denoise"]),
                str(chunk),
            ],
            "denoise_neighbours": [
                *[str(BINARY), "-r", str(r), "-p", str(prev), "-n", str(nxt)],
                *["-o", str(out["neighbours"]), str(chunk)],
            ],
            "floor": [str(floor), "floor", str(r), str(out["floor"]), str(chunk)],
            "naive": [str(floor), "naive", str(r), str(out["naive"]), str(chunk)],
        }
        best: dict[str, list[float]] = {name: [float("inf")] * 2 for name in programs}
        # The per-frame loop alone, as each program times it (the binary with --stats).
        loops = {"denoise": float("inf"), "floor": float("inf"), "naive": float("inf")}
        stat_key = {"denoise": "filter_ns", "floor": "loop_ns", "naive": "loop_ns"}
        for round_ in range(args.rounds):
            names = list(programs) if round_ % 2 == 0 else list(reversed(programs))
            for name in names:
                wall, cpu, stdout = timed(programs[name])
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
                if name in loops:
                    loops[name] = min(loops[name], json.loads(stdout)[stat_key[name]] / 1e9)
        # The straightforward filter computes the same frames: a check of the binary.
        header_len = out["denoise"].read_bytes().index(b"\n") + 1
        naive_len = out["naive"].read_bytes().index(b"\n") + 1
        same = out["denoise"].read_bytes()[header_len:] == out["naive"].read_bytes()[naive_len:]
        if not same:
            raise SystemExit("denoise_filter: the binary's frames differ from the naive filter's")
    for name, (wall, cpu) in best.items():
        results[f"{name}_ms"] = round(1000 * wall / n, 3)
        results[f"{name}_cpu_ms"] = round(1000 * cpu / n, 3)
    for name, seconds in loops.items():
        results[f"{name}_loop_ms"] = round(1000 * seconds / n, 3)
    results["naive_equals_denoise"] = same
    results["loop_ratio_to_floor"] = round(results["denoise_loop_ms"] / results["floor_loop_ms"], 3)
    results["ratio_to_floor"] = round(results["denoise_ms"] / results["floor_ms"], 3)
    results["cpu_ratio_to_floor"] = round(results["denoise_cpu_ms"] / results["floor_cpu_ms"], 3)
    results["ratio_neighbours_to_floor"] = round(
        results["denoise_neighbours_ms"] / results["floor_ms"], 3
    )
    results["speedup_over_naive"] = round(results["naive_ms"] / results["denoise_ms"], 2)
    results["target_met"] = max(results["loop_ratio_to_floor"], results["ratio_to_floor"]) <= 1.5
    print(json.dumps(results, indent=2))
    print(
        f"denoise {WIDTH}x{HEIGHT} 4:2:0 r={r}: filter {results['denoise_loop_ms']} ms/frame = "
        f"{results['loop_ratio_to_floor']}x the floor loop ({results['floor_loop_ms']} ms); "
        f"whole process {results['denoise_ms']} ms/frame = {results['ratio_to_floor']}x the "
        f"floor program ({results['floor_ms']} ms), CPU {results['cpu_ratio_to_floor']}x; with "
        f"neighbours {results['denoise_neighbours_ms']} ms; naive per-sample filter "
        f"{results['naive_ms']} ms ({results['speedup_over_naive']}x slower, same bytes: {same})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
