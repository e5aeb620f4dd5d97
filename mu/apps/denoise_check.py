"""Denoised chunks checked against the Python reference run over the whole video at once.

Theory of operation
-------------------
The input chunks are read in order and joined into one video, which
:func:`mu.denoise.filter_video` filters in one piece; the result is cut back into chunks of
the inputs' lengths. Each expected chunk is written as the ``denoise`` binary writes one: the
input chunk's header line unchanged, then per frame a bare ``FRAME`` line and the Y, Cb and
Cr samples. A denoised chunk is right only if it is exactly those bytes (issue 18, item 4).

``python -m mu.apps.denoise_check INPUTS OUTPUTS --radius R`` checks the ``*.y4m`` of the
directory OUTPUTS (what ``mu denoise --output-dir`` downloaded) against the same-named
chunks of INPUTS, which must be the whole video (``mu png2y4m --output-dir``'s chunks).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mu.denoise import DenoiseError, filter_video
from mu.y4m import Planes, Video, Y4MError, read_y4m

__all__ = ["ChunkCheck", "check_chunks", "expected_chunks", "main"]


@dataclass(frozen=True)
class ChunkCheck:
    """One denoised chunk against the reference: ``problem`` None when byte-identical."""

    path: str
    frames: int
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.readline()


def _chunk_bytes(header: bytes, frames: Sequence[Planes]) -> bytes:
    parts = [header]
    for frame in frames:
        parts.append(b"FRAME\n")
        parts.extend(plane.tobytes() for plane in frame)
    return b"".join(parts)


def expected_chunks(inputs: Sequence[Path], radius: int) -> list[tuple[bytes, int]]:
    """The bytes each input chunk's denoised output must have, and its frame count: the
    whole video (the chunks in order) filtered in one piece with ``radius``, cut back into
    chunks.

    Raises:
        mu.y4m.Y4MError, mu.denoise.DenoiseError: an unreadable chunk, chunks that differ
            in size or chroma, a bad radius.
    """
    videos = [read_y4m(path) for path in inputs]
    first = videos[0]
    whole = Video(first.width, first.height, first.fps, first.aspect, first.chroma,
                  [frame for video in videos for frame in video.frames])
    filtered = filter_video(whole, radius).frames
    out = []
    start = 0
    for path, video in zip(inputs, videos, strict=True):
        frames = filtered[start:start + len(video.frames)]
        out.append((_chunk_bytes(_header(path), frames), len(frames)))
        start += len(video.frames)
    return out


def check_chunks(inputs: Sequence[Path], outputs: Sequence[Path], radius: int
                 ) -> list[ChunkCheck]:
    """Each of ``outputs`` (the denoised ``inputs``, in the same order) against the
    reference (:func:`expected_chunks`)."""
    checks = []
    for path, (want, frames) in zip(outputs, expected_chunks(inputs, radius), strict=True):
        if not path.exists():
            checks.append(ChunkCheck(str(path), 0, "missing"))
            continue
        got = path.read_bytes()
        problem = None
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                      min(len(got), len(want)))
            problem = (f"differs from the one-piece reference at byte {at} ({len(got)} bytes, "
                       f"expected {len(want)})")
        checks.append(ChunkCheck(str(path), frames, problem))
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    """Check a directory of denoised chunks; one line per chunk, exit status 0 if all are
    identical to the reference, 1 if one is not, 2 for bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m mu.apps.denoise_check",
        description="Check denoised Y4M chunks byte for byte against the Python reference "
        "run over the whole video (the input chunks joined in order) in one piece.")
    parser.add_argument("inputs", help="directory of the input chunks, the whole video")
    parser.add_argument("outputs", help="directory of the denoised chunks (same names)")
    parser.add_argument("--radius", type=int, required=True, help="the radius they used")
    args = parser.parse_args(argv)
    inputs = sorted(Path(args.inputs).glob("*.y4m"))
    if not inputs:
        print(f"denoise_check: error: no .y4m files in {args.inputs!r}", file=sys.stderr)
        return 2
    outputs = sorted(Path(args.outputs).glob("*.y4m"))
    if not outputs:
        print(f"denoise_check: error: no .y4m files in {args.outputs!r}", file=sys.stderr)
        return 2
    names = {p.name for p in inputs}
    strays = [p.name for p in outputs if p.name not in names]
    if strays:
        print(f"denoise_check: error: {strays[0]} in {args.outputs!r} has no input chunk of "
              "that name", file=sys.stderr)
        return 2
    try:
        every = check_chunks(inputs, [Path(args.outputs) / p.name for p in inputs], args.radius)
    except (Y4MError, DenoiseError, OSError) as exc:
        print(f"denoise_check: error: {exc}", file=sys.stderr)
        return 2
    checks = [c for c in every if Path(c.path).name in {p.name for p in outputs}]
    for c in checks:
        print(f"{c.path}: {c.frames} frames, {'identical' if c.ok else c.problem}")
    bad = sum(not c.ok for c in checks)
    print(f"{len(checks) - bad} of {len(checks)} chunks identical to the one-piece reference "
          f"(radius {args.radius}, {len(inputs)} input chunks)")
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
