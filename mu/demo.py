"""``mu demo``: the whole flow on this machine, frames to a video, checked end to end.

Theory of operation
-------------------
1. Write 24 frames of 1280x720 16-bit moving content (:mod:`mu.frames`) into
   ``OUT/frames/``.
2. Run the png2y4m job through the typed run path (:func:`mu.runopts.run`, as
   ``mu png2y4m`` does) on the local site it is given (embedded emulator and moto S3,
   ephemeral keys, the static binary): 4 workers x 6 frames, inputs uploaded from
   ``OUT/frames``, the four Y4M chunks downloaded to ``OUT/``, the run record written to
   ``OUT/run.jsonl``.
3. Verify each chunk against the Python reference conversion of its PNG frames (frame
   count, size, PSNR of Y, Cb and Cr).
4. Denoise the Y4M chunks, already in S3, with the denoise job (``mu denoise``, radius
   :data:`RADIUS`): four workers, each sending its first and last frames to its neighbours
   through the relay beside the coordinator; the denoised chunks are downloaded to
   ``OUT/denoised/`` and checked byte for byte against the Python reference run over the
   whole video in one piece (:mod:`mu.apps.denoise_check`); its run record is
   ``OUT/denoise.jsonl``.
5. Encode the Y4M chunks with the encode job (``mu encode -i y4m``: VP9, good quality,
   ``--cpu-used 8`` to keep the demo fast), one IVF chunk per worker, stitched into
   ``OUT/demo.ivf``; decode it with Debian's ``vpxdec`` and check it against the Y4M
   chunks (frame count, size, luma PSNR above :data:`mu.apps.encode_check.MIN_PSNR`).
6. Draw ``OUT/timeline.png`` (of the png2y4m run) and ``OUT/denoise-timeline.png`` (of the
   denoise run, whose bars show the halo exchange's states) and print a summary: the
   video's size and PSNR, and the time per state (from the runs' results in hand).

The exit status is 0 only if every run succeeded and every chunk and the video verified.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import png

from mu.apps.png2y4m_run import Png2Y4MJob
from mu.frames import write_frames
from mu.launch import Site
from mu.options import Png2Y4MOptions, RunOptions
from mu.runopts import RunResult, run

if TYPE_CHECKING:
    from mu.apps.denoise_check import ChunkCheck as DenoiseCheck
    from mu.apps.encode_check import VideoCheck
    from mu.coordinator import RunResult as CoordinatorResult

__all__ = ["MIN_PSNR", "ChunkCheck", "run_demo", "verify_chunk"]

MIN_PSNR = 48.0
"""Lowest PSNR (dB) of any plane against the float reference that counts as correct.
Rounding alone gives about 59 dB on this content; dithering costs a few dB."""

WORKERS, FRAMES, WIDTH, HEIGHT, DEPTH = 4, 6, 1280, 720, 16
ENCODER_SPEED = 8
"""``--cpu-used`` of the demo's encode: about 0.15 s a 720p frame here, 40 dB on its frames."""
BUCKET, VIDEO = "mu-demo", "demo"
RADIUS = 2
"""The denoise step's radius: output frame t averages frames t-2..t+2 (weights 1 4 6 4 1)."""


@dataclass(frozen=True)
class ChunkCheck:
    """Verification of one output chunk."""

    path: str
    frames: int
    size: tuple[int, int]
    psnr: tuple[float, float, float]  # worst frame's PSNR of Y, Cb, Cr
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def read_png(path: Path) -> tuple[np.ndarray[Any, Any], int]:
    """RGB samples and bit depth of a PNG, 16-bit kept (pypng; Pillow would truncate)."""
    with open(path, "rb") as f:
        width, height, rows, info = png.Reader(file=f).asRGB()
        data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    depth = int(info["bitdepth"])
    return data.reshape(height, width, 3), depth


def verify_chunk(path: Path, pngs: list[Path]) -> ChunkCheck:
    """Compare a Y4M chunk with the reference conversion of its PNG frames."""
    from mu.y4m import convert_frame, psnr, read_y4m

    video = read_y4m(path)
    size = (video.width, video.height)
    if len(video.frames) != len(pngs):
        return ChunkCheck(str(path), len(video.frames), size, (0, 0, 0),
                          f"{len(video.frames)} frames, expected {len(pngs)}")
    worst = [float("inf")] * 3
    for frame, png_path in zip(video.frames, pngs, strict=True):
        rgb, depth = read_png(png_path)
        if (rgb.shape[1], rgb.shape[0]) != size:
            return ChunkCheck(str(path), len(video.frames), size, (0, 0, 0),
                              f"size {size} differs from {png_path.name}")
        reference = convert_frame(rgb, depth, video.chroma)
        for plane in range(3):
            worst[plane] = min(worst[plane], psnr(frame[plane], reference[plane]))
    low = min(worst)
    problem = None if low >= MIN_PSNR else f"PSNR {low:.1f} dB below {MIN_PSNR} dB"
    return ChunkCheck(str(path), len(video.frames), size, (worst[0], worst[1], worst[2]), problem)


def time_per_state(result: CoordinatorResult) -> dict[str, float]:
    """Mean seconds a worker spent in each state, over every attempt of the run."""
    spent: dict[str, list[float]] = defaultdict(list)
    for attempt in result.actors:
        totals: dict[str, float] = defaultdict(float)
        for (start, name), (stop, _) in zip(attempt.timestamps, attempt.timestamps[1:], strict=False):
            totals[name] += stop - start
        for name, total in totals.items():
            spent[name].append(total)
    return {name: statistics.fmean(values) for name, values in spent.items()}


def run_demo(
    out_dir: str,
    site: Site,
    stream: TextIO | None = None,
    frame_writer: Callable[..., list[Path]] = write_frames,
) -> int:
    """Run the demo into ``out_dir`` on ``site`` (the local one; the caller closes it).

    Returns:
        0 if every chunk was produced and verified, else 1.
    """
    say = stream or sys.stdout
    out = Path(out_dir)
    frames_dir = out / "frames"
    started = time.monotonic()
    print(f"[1/6] writing {WORKERS * FRAMES} frames {WIDTH}x{HEIGHT} {DEPTH}-bit to "
          f"{frames_dir}/", file=say)
    pngs = frame_writer(frames_dir, WORKERS * FRAMES, WIDTH, HEIGHT, DEPTH)
    record = out / "run.jsonl"
    job = Png2Y4MJob(Png2Y4MOptions(
        workers=WORKERS, frames=FRAMES, video=VIDEO, bucket=BUCKET,
        input_dir=str(frames_dir), output_dir=str(out),
    ))
    print(f"[2/6] running png2y4m: {WORKERS} workers x {FRAMES} frames on the local "
          "emulator", file=say)
    run_started = time.monotonic()
    outcome: RunResult = run(job, RunOptions(port=0, record=str(record)), site, out=say)
    run_wall = time.monotonic() - run_started

    print("[3/6] verifying chunks against the Python reference", file=say)
    checks = []
    for chunk in range(WORKERS):
        path = out / f"{chunk:08d}.y4m"
        mine = pngs[chunk * FRAMES : (chunk + 1) * FRAMES]
        if not path.exists():
            checks.append(ChunkCheck(str(path), 0, (0, 0), (0, 0, 0), "missing"))
            continue
        checks.append(verify_chunk(path, mine))
    for c in checks:
        status = "ok" if c.ok else f"FAILED: {c.problem}"
        print(f"  {c.path}: {c.frames} frames {c.size[0]}x{c.size[1]}, PSNR Y/Cb/Cr "
              f"{c.psnr[0]:.1f}/{c.psnr[1]:.1f}/{c.psnr[2]:.1f} dB  {status}", file=say)

    denoised, denoise_wall = _denoise(out, site, say, outcome.exit_status == 0)
    video, encode_wall = _encode(out, site, say, outcome.exit_status == 0)

    print("[6/6] drawing the timelines", file=say)
    timeline = None
    if outcome.run is not None:
        from mu.plot import plot_timeline

        timeline = plot_timeline(record, out / "timeline.png", "mu demo: png2y4m, local backend")
    if denoised is not None and denoised.run is not None:
        from mu.plot import plot_timeline

        plot_timeline(out / "denoise.jsonl", out / "denoise-timeline.png",
                      f"mu demo: denoise (radius {RADIUS}), halos through the relay")
    total = time.monotonic() - started
    ok = outcome.exit_status == 0 and all(c.ok for c in checks) and video is not None \
        and video.ok and denoised is not None and denoised.ok
    print("", file=say)
    print(f"{'PASSED' if ok else 'FAILED'}: {WORKERS * FRAMES} frames, {WORKERS} workers, "
          f"run {run_wall:.1f} s, denoise {denoise_wall:.1f} s, encode {encode_wall:.1f} s, "
          f"demo {total:.1f} s", file=say)
    if denoised is not None:
        print(f"  denoised: {out}/denoised/*.y4m, radius {RADIUS}, "
              f"{'identical to' if denoised.ok else 'NOT identical to'} the one-piece "
              f"reference; relay: {denoised.relay_line}", file=say)
    if video is not None:
        print(f"  video: {video.path}, VP9 {video.size[0]}x{video.size[1]}, {video.frames} "
              f"frames, {video.bytes} bytes ({video.bytes * 8 * 24 / video.frames / 1000:.0f} "
              f"kbit/s at 24 fps), luma PSNR {video.psnr:.1f} dB (worst frame "
              f"{video.worst:.1f} dB) by vpxdec", file=say)
    if outcome.run is not None:
        per_state = time_per_state(outcome.run)
        print("  mean time per state: " + ", ".join(
            f"{name} {seconds:.2f} s" for name, seconds in per_state.items()), file=say)
    print(f"  outputs: {out}/*.y4m, {out}/*.ivf, run records {record} and "
          f"{out}/denoise.jsonl" + (f", timelines {timeline} and {out}/denoise-timeline.png"
                                    if timeline else ""), file=say)
    return 0 if ok else 1


@dataclass(frozen=True)
class Denoised:
    """The denoise step's outcome."""

    run: CoordinatorResult | None
    checks: tuple[DenoiseCheck, ...]
    relay_line: str

    @property
    def ok(self) -> bool:
        return self.run is not None and self.run.exit_status == 0 and len(self.checks) == \
            WORKERS and all(c.ok for c in self.checks)


def _denoise(out: Path, site: Site, say: TextIO, chunks_made: bool
             ) -> tuple[Denoised | None, float]:
    """Step 4: denoise the Y4M chunks in S3 through the relay and check them byte for byte
    against the one-piece reference.

    Returns:
        the outcome (None: the step was skipped) and the run's wall time.
    """
    from mu.apps.denoise_check import check_chunks
    from mu.apps.denoise_run import DenoiseJob, DenoiseOptions

    print(f"[4/6] denoising the chunks (radius {RADIUS}, {WORKERS} workers trading halo frames "
          "through the relay) and checking them against the one-piece reference", file=say)
    if not chunks_made:
        print("  skipped: the png2y4m run did not finish", file=say)
        return None, 0.0
    target = out / "denoised"
    job = DenoiseJob(DenoiseOptions(
        workers=WORKERS, frames=FRAMES, video=VIDEO, bucket=BUCKET, radius=RADIUS,
        output_dir=str(target),
    ))
    started = time.monotonic()
    done = run(job, RunOptions(port=0, relay_port=0, record=str(out / "denoise.jsonl")), site,
               out=say)
    wall = time.monotonic() - started
    names = [f"{chunk:08d}.y4m" for chunk in range(WORKERS)]
    checks = tuple(check_chunks([out / n for n in names], [target / n for n in names], RADIUS))
    for c in checks:
        status = "identical" if c.ok else f"FAILED: {c.problem}"
        print(f"  {c.path}: {c.frames} frames  {status}", file=say)
    relay = done.relay.line() if done.relay is not None else "not started"
    return Denoised(done.run, checks, relay), wall


def _encode(out: Path, site: Site, say: TextIO, chunks_made: bool) -> tuple[VideoCheck | None, float]:
    """Step 4: encode the Y4M chunks in S3 into ``out/demo.ivf`` and check it with vpxdec.

    Returns:
        the check (None: no video was made) and the encode's wall time.
    """
    from mu.apps.encode_check import check_video
    from mu.apps.encode_run import EncodeJob, EncodeOptions
    from mu.errors import ConfigError
    from mu.y4m import Video, read_y4m

    print(f"[5/6] encoding the chunks to VP9 ({WORKERS} workers, --cpu-used {ENCODER_SPEED}) "
          "and checking the video with vpxdec", file=say)
    if not chunks_made:
        print("  skipped: the png2y4m run did not finish", file=say)
        return None, 0.0
    job = EncodeJob(EncodeOptions(
        workers=WORKERS, frames=FRAMES, video=VIDEO, bucket=BUCKET, informat="y4m",
        cpu_used=ENCODER_SPEED, output_dir=str(out),
    ))
    started = time.monotonic()
    encoded = run(job, RunOptions(port=0), site, out=say)
    wall = time.monotonic() - started
    path = out / f"{VIDEO}.ivf"
    if encoded.exit_status != 0 or not path.exists():
        print("  FAILED: no video was made", file=say)
        return None, wall
    source = Video(WIDTH, HEIGHT)
    for chunk in range(WORKERS):
        source.frames.extend(read_y4m(out / f"{chunk:08d}.y4m").frames)
    try:
        check = check_video(path, source)
    except ConfigError as exc:
        print(f"  FAILED: {exc}", file=say)
        return None, wall
    status = "ok" if check.ok else f"FAILED: {check.problem}"
    print(f"  {check.path}: {check.frames} frames {check.size[0]}x{check.size[1]}, "
          f"{check.bytes} bytes, luma PSNR {check.psnr:.1f} dB  {status}", file=say)
    return check, wall
