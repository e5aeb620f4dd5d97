"""Benchmark of the png2y4m binary against the libpng decode-only floor.

Writes 1920x1080 frames of moving, natural-looking content (mu.frames) as 16-bit and 8-bit RGB
PNGs with per-row adaptive filtering (like common encoders), then measures, in one run:

- ``floor``: bench/pngdecode.c (compiled here into a temporary directory) decoding every frame
  with libpng and no conversion; no PNG-reading converter can be faster;
- png2y4m in one process for all frames, with and without dither, 1 and 2 threads;
- png2y4m with one ``-i`` process per frame (how a Lambda worker runs it);
- the Python reference (mu.y4m.convert_frame) on already-decoded frames;
- PSNR of Y, Cb, Cr against the unrounded float reference, with and without dither.

Each timing is the best of ``--repeat`` runs (the machine may be shared). Prints one JSON
object, then a one-line summary.

    python3 bench/png2y4m.py [--frames N] [--quick] [--size WxH] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import png

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mu.frames import make_frame  # noqa: E402
from mu.y4m import convert_frame, convert_planes, psnr, read_y4m  # noqa: E402

BINARY = ROOT / "function" / "png2y4m" / "png2y4m"


def _filtered_rows(raw: np.ndarray, bpp: int) -> bytes:
    """PNG scanlines with the filter of least absolute sum chosen per row (libpng's heuristic)."""
    x = raw.astype(np.int32)
    h, n = x.shape
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]
    b = np.zeros_like(x)
    b[1:] = x[:-1]
    c = np.zeros_like(x)
    c[1:, bpp:] = x[:-1, :-bpp]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    candidates = np.stack([x, x - a, x - b, x - (a + b) // 2, x - paeth]) & 0xFF
    signed = np.where(candidates > 127, 256 - candidates, candidates).sum(axis=2)
    choice = signed.argmin(axis=0)
    rows = candidates[choice, np.arange(h)].astype(np.uint8)
    out = np.empty((h, n + 1), np.uint8)
    out[:, 0] = choice
    out[:, 1:] = rows
    return out.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def write_rgb_png(path: Path, rgb: np.ndarray, depth: int) -> None:
    h, w, _ = rgb.shape
    raw = rgb.astype(">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(h, -1)
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([depth, 2, 0, 0, 0])
    idat = zlib.compress(_filtered_rows(raw, 3 * depth // 8), 6)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _make(job: tuple[Path, int, int, int]) -> None:
    directory, index, w, h = job
    rgb16 = make_frame(index, w, h, 16)
    write_rgb_png(directory / "16" / f"{index:08d}.png", rgb16, 16)
    rgb8 = ((rgb16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    write_rgb_png(directory / "8" / f"{index:08d}.png", rgb8, 8)


def make_frames(directory: Path, count: int, w: int, h: int) -> None:
    """Frames 1..count in directory/16 and directory/8, kept between runs."""
    for depth in ("16", "8"):
        (directory / depth).mkdir(parents=True, exist_ok=True)
    todo = [
        (directory, i, w, h)
        for i in range(1, count + 1)
        if not (directory / "8" / f"{i:08d}.png").exists()
    ]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_make, todo))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best_of(repeat: int, commands: list[list[str]]) -> tuple[float, float]:
    """Least wall time and least CPU time (user + system) of ``repeat`` runs of the commands.

    CPU time is what other load on a shared machine disturbs least.
    """
    wall = cpu = float("inf")
    for _ in range(repeat):
        start, cpu0 = time.perf_counter(), _children_cpu()
        for argv in commands:
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, _children_cpu() - cpu0)
    return wall, cpu


def per_frame_processes(
    repeat: int, binary: Path, pngs: list[Path], out: Path
) -> tuple[float, float]:
    wall = cpu = float("inf")
    for _ in range(repeat):
        out.unlink(missing_ok=True)
        w, c = best_of(1, [[str(binary), "-i", "-o", str(out), str(p)] for p in pngs])
        wall, cpu = min(wall, w), min(cpu, c)
    return wall, cpu


def record(r: dict[str, Any], frames: int, key: str, wall_cpu: tuple[float, float]) -> None:
    """Store a (wall, cpu) pair of seconds for ``frames`` frames as ms per frame."""
    r[f"{key}_ms"] = round(1000 * wall_cpu[0] / frames, 2)
    r[f"{key}_cpu_ms"] = round(1000 * wall_cpu[1] / frames, 2)


def read_png(path: Path) -> tuple[np.ndarray, int]:
    w, h, rows, info = png.Reader(filename=str(path)).asRGB()
    data = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    return data.reshape(h, w, 3), int(info["bitdepth"])


def quality(binary: Path, png_path: Path, tmp: Path, dither: bool) -> dict[str, float]:
    out = tmp / "q.y4m"
    flags = [] if dither else ["--no-dither"]
    subprocess.run([str(binary), *flags, "-o", str(out), str(png_path)], check=True)
    frame = read_y4m(out).frames[0]
    rgb, depth = read_png(png_path)
    ref = convert_planes(rgb, depth)
    result = {}
    for name, got, want in zip(("Y", "Cb", "Cr"), frame, ref, strict=True):
        want = np.clip(want, 0, 255)
        result[f"psnr_{name}"] = round(psnr(got, want), 2)
        result[f"mean_err_{name}"] = round(float((got - want).mean()), 4)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="6 frames, 1 repeat")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--binary", type=Path, default=BINARY)
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="where frames are kept between runs (default: system temp dir)",
    )
    args = parser.parse_args()
    if args.quick:
        args.frames, args.repeat = min(args.frames, 6), 1
    w, h = (int(v) for v in args.size.lower().split("x"))
    n = args.frames
    subprocess.run(["make", "-s", "-C", str(BINARY.parent)], check=True)
    cache = args.cache or Path(tempfile.gettempdir()) / f"mu-bench-png2y4m-{w}x{h}"
    started = time.perf_counter()
    make_frames(cache, n, w, h)
    generation = time.perf_counter() - started

    results: dict[str, Any] = {
        "size": f"{w}x{h}",
        "frames": n,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "frame_generation_s": round(generation, 1),
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        floor = tmp / "pngdecode"
        subprocess.run(
            ["cc", "-O2", "-o", str(floor), str(ROOT / "bench" / "pngdecode.c"), "-lpng16", "-lz"],
            check=True,
        )
        for depth in ("16", "8"):
            # Exactly n frames (the cache may hold more): links in a directory of this run.
            (tmp / depth).mkdir()
            pngs = []
            for i in range(1, n + 1):
                link = tmp / depth / f"{i:08d}.png"
                link.symlink_to(cache / depth / f"{i:08d}.png")
                pngs.append(link)
            pattern = str(tmp / depth / "%08d.png")
            r: dict[str, Any] = {}

            record(r, n, "floor_libpng", best_of(args.repeat, [[str(floor), *map(str, pngs)]]))
            out = str(tmp / "o.y4m")
            for label, flags in (("dither", []), ("no_dither", ["--no-dither"])):
                for threads in ("1", "2"):
                    argv = [str(args.binary), *flags, "--threads", threads, "-o", out, pattern]
                    record(r, n, f"{label}_t{threads}", best_of(args.repeat, [argv]))
            record(
                r,
                n,
                "per_frame_process",
                per_frame_processes(args.repeat, args.binary, pngs, tmp / "i.y4m"),
            )
            r["ratio_to_floor_dither"] = round(r["dither_t1_ms"] / r["floor_libpng_ms"], 3)
            r["ratio_to_floor_no_dither"] = round(r["no_dither_t1_ms"] / r["floor_libpng_ms"], 3)
            r["cpu_ratio_to_floor_dither"] = round(
                r["dither_t1_cpu_ms"] / r["floor_libpng_cpu_ms"], 3
            )
            r["cpu_ratio_to_floor_no_dither"] = round(
                r["no_dither_t1_cpu_ms"] / r["floor_libpng_cpu_ms"], 3
            )
            r["thread2_speedup_dither"] = round(r["dither_t1_ms"] / r["dither_t2_ms"], 2)
            rgb, bits = read_png(pngs[0])
            start = time.perf_counter()
            convert_frame(rgb, bits)
            r["python_reference_ms"] = round(1000 * (time.perf_counter() - start), 1)
            r["quality_dither"] = quality(args.binary, pngs[0], tmp, True)
            r["quality_no_dither"] = quality(args.binary, pngs[0], tmp, False)
            results[f"rgb{depth}"] = r
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))
    s16, s8 = results["rgb16"], results["rgb8"]
    print(
        f"png2y4m {w}x{h}: 16-bit {s16['dither_t1_ms']} ms/frame dither "
        f"({s16['ratio_to_floor_dither']}x libpng floor {s16['floor_libpng_ms']} ms), "
        f"no-dither {s16['no_dither_t1_ms']} ms, 2 threads {s16['dither_t2_ms']} ms; "
        f"8-bit {s8['dither_t1_ms']} ms ({s8['ratio_to_floor_dither']}x floor "
        f"{s8['floor_libpng_ms']} ms); -i per frame {s16['per_frame_process_ms']} ms; "
        f"PSNR Y dither {s16['quality_dither']['psnr_Y']} dB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
