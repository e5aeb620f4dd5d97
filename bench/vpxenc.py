"""Benchmark of our static vpxenc against Debian's vpxenc: the same library, the same settings.

Writes frames of moving, natural-looking content (mu.frames) as 8-bit PNGs, turns them into
one Y4M with png2y4m, then encodes that Y4M with both encoders under each setting (VP9 and
VP8, good-quality and realtime deadlines, constant quality and target bitrate, 1 and 2
threads). Debian's vpxenc gets the equivalent flags plus ``--passes=1 --ivf -q`` (ours is
one pass); both IVFs are compared byte for byte, so the two did the very same work.

The two binaries are measured in one run, interleaved: each round runs both, the order
alternating from round to round, so a slow stretch of a shared machine hits both alike. A
run's time covers the whole process (start-up, reading the Y4M, encoding, writing the IVF);
wall time and CPU time (user + system of the child) are recorded, and the figures are the
median over rounds (and, for CPU, also the minimum), divided by the frame count. The ratio is ours / Debian's (target: at
most 1.05). Prints one JSON object, then a one-line summary.

    python3 bench/vpxenc.py [--frames N] [--size WxH] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mu.frames import parse_size, write_frames  # noqa: E402

OURS = ROOT / "function" / "vpxenc" / "vpxenc"
PNG2Y4M = ROOT / "function" / "png2y4m" / "png2y4m"
DEBIAN = Path("/usr/bin/vpxenc")

# name -> (our flags, Debian vpxenc's flags for the same settings)
SETTINGS: dict[str, tuple[list[str], list[str]]] = {
    "vp9_good_cpu4_cq32": (
        ["--codec", "vp9", "--good", "--cpu-used", "4", "--cq-level", "32"],
        ["--codec=vp9", "--good", "--cpu-used=4", "--end-usage=q", "--cq-level=32"],
    ),
    "vp9_rt_cpu8_1000k": (
        ["--codec", "vp9", "--rt", "--cpu-used", "8", "--target-bitrate", "1000"],
        ["--codec=vp9", "--rt", "--cpu-used=8", "--end-usage=vbr", "--target-bitrate=1000"],
    ),
    "vp8_good_cpu4_cq32": (
        ["--codec", "vp8", "--good", "--cpu-used", "4", "--cq-level", "32"],
        ["--codec=vp8", "--good", "--cpu-used=4", "--end-usage=q", "--cq-level=32"],
    ),
    "vp8_rt_cpu8_1000k": (
        ["--codec", "vp8", "--rt", "--cpu-used", "8", "--target-bitrate", "1000"],
        # Our VP8 realtime speed is fixed: vpxenc's negative --cpu-used.
        ["--codec=vp8", "--rt", "--cpu-used=-8", "--end-usage=vbr", "--target-bitrate=1000"],
    ),
    "vp9_good_cpu4_cq32_t2": (
        ["--codec", "vp9", "--good", "--cpu-used", "4", "--cq-level", "32", "--threads", "2"],
        ["--codec=vp9", "--good", "--cpu-used=4", "--end-usage=q", "--cq-level=32", "--threads=2"],
    ),
}


def timed(argv: list[str]) -> tuple[float, float]:
    """Run argv to completion; return (wall seconds, CPU seconds of the child)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.strip()}")
    return wall, usage.ru_utime + usage.ru_stime


def make_source(tmp: Path, frames: int, width: int, height: int) -> Path:
    write_frames(tmp / "png", frames, width, height, depth=8)
    y4m = tmp / "source.y4m"
    subprocess.run(
        [str(PNG2Y4M), "-o", str(y4m), str(tmp / "png" / "%08d.png")], check=True, timeout=600
    )
    shutil.rmtree(tmp / "png")
    return y4m


def measure(
    source: Path, tmp: Path, frames: int, rounds: int, ours: list[str], theirs: list[str]
) -> dict[str, Any]:
    ours_out, theirs_out = tmp / "ours.ivf", tmp / "theirs.ivf"
    argv = {
        "ours": [str(OURS), *ours, "-o", str(ours_out), str(source)],
        "debian": [str(DEBIAN), *theirs, "--passes=1", "--ivf", "-q", "-o", str(theirs_out),
                   str(source)],
    }  # fmt: skip
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "debian": []}
    for r in range(rounds):
        for who in ("ours", "debian") if r % 2 == 0 else ("debian", "ours"):
            times[who].append(timed(argv[who]))
    result: dict[str, Any] = {"same_bytes": ours_out.read_bytes() == theirs_out.read_bytes()}
    result["ivf_bytes"] = ours_out.stat().st_size
    for who, runs in times.items():
        result[f"{who}_wall_ms_per_frame"] = round(
            1000 * statistics.median(w for w, _ in runs) / frames, 3
        )
        result[f"{who}_cpu_ms_per_frame"] = round(
            1000 * statistics.median(c for _, c in runs) / frames, 3
        )
        result[f"{who}_cpu_ms_per_frame_min"] = round(1000 * min(c for _, c in runs) / frames, 3)
    for kind in ("wall", "cpu", "cpu_min"):
        key = "ms_per_frame_min" if kind == "cpu_min" else "ms_per_frame"
        unit = "cpu" if kind == "cpu_min" else kind
        result[f"{kind}_ratio"] = round(
            result[f"ours_{unit}_{key}"] / result[f"debian_{unit}_{key}"], 3
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="640x360", help="WxH (default 640x360)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="12 frames of 320x180, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.size, args.rounds = 12, "320x180", 2
    width, height = parse_size(args.size)
    for path in (OURS, PNG2Y4M):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run 'make binary' first")
    if not DEBIAN.is_file():
        raise SystemExit(f"{DEBIAN} is missing: install Debian's vpx-tools")
    tmp = Path(tempfile.mkdtemp(prefix="vpxenc-bench-"))
    try:
        source = make_source(tmp, args.frames, width, height)
        results: dict[str, Any] = {
            "machine": f"{os.cpu_count()} cpus, {platform.processor() or platform.machine()}",
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "frames": args.frames,
            "size": f"{width}x{height}",
            "rounds": args.rounds,
            "settings": {},
        }
        for name, (ours, theirs) in SETTINGS.items():
            results["settings"][name] = measure(source, tmp, args.frames, args.rounds, ours, theirs)
        results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))
    settings = results["settings"]
    worst = max(settings, key=lambda n: settings[n]["cpu_ratio"])
    print(
        f"vpxenc {width}x{height}, {args.frames} frames, {args.rounds} rounds: ours/Debian CPU "
        + ", ".join(f"{n} {s['cpu_ratio']}x" for n, s in settings.items())
        + f"; worst {worst} {settings[worst]['cpu_ratio']}x (target <= 1.05); same bytes: "
        + ("all" if all(s["same_bytes"] for s in settings.values()) else "NO")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
