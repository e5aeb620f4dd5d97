"""Denoised chunks checked against the Python reference run over the whole video at once.

Theory of operation
-------------------
The input chunks are read in order and joined into one video, which
:func:`mu.denoise.filter_video` filters in one piece; the result is cut back into chunks of
the inputs' lengths. Each expected chunk is written as the ``denoise`` binary writes one: the
input chunk's header line unchanged, then per frame a bare ``FRAME`` line and the Y, Cb and
Cr samples. A denoised chunk is right only if it is exactly those bytes (issue 18, item 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mu.denoise import filter_video
from mu.y4m import Planes, Video, read_y4m

__all__ = ["ChunkCheck", "check_chunks", "expected_chunks"]


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
