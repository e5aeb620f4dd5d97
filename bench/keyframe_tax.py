"""The keyframe tax: chunk-parallel encoding (``mu encode``) against one encode of the whole video.

Chunks encoded independently each start with a keyframe. This measures what that costs:
the same frames (``--frames`` of ``--size`` ``mu.frames`` content through the real png2y4m)
are encoded

* once by one ``function/vpxenc/vpxenc`` process over the whole Y4M (one keyframe), and
* by ``mu encode -i y4m`` on the local backend (embedded emulator and S3, real workers)
  with ``-f`` frames per worker for each ``--f`` value, the Y4M chunks made beforehand by
  ``mu png2y4m`` on the same site (not timed), then stitched,

at the same settings (VP9, ``--good --cpu-used 4 --cq-level 32``, one thread). Each video is
decoded by Debian's ``vpxdec`` (:func:`mu.apps.encode_check.check_video`) and compared with
the source: mean luma PSNR; bitrate is the IVF's bytes at 24 fps. Wall time is the encode
job's (launch to stitched video) or the single process's. Prints one JSON object per
configuration, then a summary line.

Usage: python bench/keyframe_tax.py [--frames 96] [--size 640x360] [--f 6,12,24,48]
       [--cpu-used 4] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends import get_backend  # noqa: E402
from mu.apps.encode_check import check_video  # noqa: E402
from mu.apps.encode_run import DEFAULT_ENCODER, EncodeJob, EncodeOptions  # noqa: E402
from mu.apps.png2y4m_run import Png2Y4MJob  # noqa: E402
from mu.frames import parse_size, write_frames  # noqa: E402
from mu.options import DEFAULT_BINARY, Png2Y4MOptions, RunOptions  # noqa: E402
from mu.runopts import run  # noqa: E402
from mu.y4m import read_y4m  # noqa: E402

FPS = 24


def kbps(size: int, frames: int) -> float:
    return size * 8 * FPS / frames / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--f", default="6,12,24,48")
    parser.add_argument("--cpu-used", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="24 frames of 320x180, f=6,12")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.size, args.f = 24, "320x180", "6,12"
    width, height = parse_size(args.size)
    chunk_sizes = [int(x) for x in args.f.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mu-keyframe-tax-") as tmp:
        work = Path(tmp)
        write_frames(work / "frames", args.frames, width, height, depth=8)
        source_path = work / "source.y4m"
        subprocess.run([str(DEFAULT_BINARY), "-o", str(source_path),
                        str(work / "frames" / "%08d.png")], check=True)
        source = read_y4m(source_path)
        settings = f"--codec vp9 --good --cpu-used {args.cpu_used} --cq-level 32 --threads 1"

        whole = work / "whole.ivf"
        started = time.monotonic()
        subprocess.run([str(DEFAULT_ENCODER), *settings.split(), "-o", str(whole),
                        str(source_path)], check=True)
        wall = time.monotonic() - started
        check = check_video(whole, source)
        baseline = {"mode": "single process", "f": args.frames, "workers": 1,
                    "bytes": check.bytes, "kbps": round(kbps(check.bytes, args.frames), 1),
                    "psnr_db": round(check.psnr, 2), "wall_s": round(wall, 2),
                    "ok": check.ok}
        print(json.dumps(baseline), flush=True)
        rows.append(baseline)

        site = get_backend("local")
        try:
            for f in chunk_sizes:
                workers = args.frames // f
                log = io.StringIO()
                made = run(Png2Y4MJob(Png2Y4MOptions(
                    workers=workers, frames=f, video="v", bucket="bench",
                    input_dir=str(work / "frames") if f == chunk_sizes[0] else None,
                )), RunOptions(port=0), site, out=log)
                if made.exit_status != 0:
                    print(log.getvalue(), file=sys.stderr)
                    return 1
                out = work / f"f{f}"
                options = EncodeOptions(workers=workers, frames=f, video="v", bucket="bench",
                                        informat="y4m", cpu_used=args.cpu_used,
                                        output_dir=str(out), function="bench-encode")
                started = time.monotonic()
                done = run(EncodeJob(options), RunOptions(port=0), site, out=log)
                wall = time.monotonic() - started
                if done.exit_status != 0:
                    print(log.getvalue(), file=sys.stderr)
                    return 1
                check = check_video(out / "v.ivf", source)
                row = {"mode": "chunk-parallel", "f": f, "workers": workers,
                       "bytes": check.bytes, "kbps": round(kbps(check.bytes, args.frames), 1),
                       "psnr_db": round(check.psnr, 2), "wall_s": round(wall, 2),
                       "size_vs_single": round(check.bytes / baseline["bytes"], 3),
                       "ok": check.ok}
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            site.close()
    print("summary: " + "; ".join(
        f"{r['mode']} f={r['f']}: {r['kbps']} kbit/s, {r['psnr_db']} dB, {r['wall_s']} s"
        for r in rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
