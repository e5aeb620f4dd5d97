"""The temporal filter of ``mu denoise``: the executable specification of ``function/denoise``.

Theory of operation
-------------------
Output frame ``t`` is the integer-weighted average of input frames ``t-r .. t+r``, plane by
plane and sample by sample, with the binomial weights of row ``2r`` of Pascal's triangle
(:func:`weights`: ``1 2 1`` for ``r = 1``, ``1 4 6 4 1`` for 2, ``1 6 15 20 15 6 1`` for 3),
rounded half up: ``(sum(w * x) + W // 2) // W`` with ``W`` the weights' sum (``4 ** r``).

A chunk of a video is filtered with the ``r`` frames just before it (``prev``, of which the
last ``r`` are used) and the ``r`` just after it (``next``, the first ``r``). Where there is
none (``prev`` or ``next`` is ``None``) the chunk starts or ends the video and its edge frame
stands for the missing ones. Edge frames are repeated at the video's ends only, never at a
chunk's, so filtering each chunk with its neighbours' frames gives the frames of the whole
video filtered in one piece (:func:`filter_video`).

The arithmetic is exact integer arithmetic in numpy (``uint32`` sums, floor division, no
shift that would assume ``W`` is a power of two); it depends on numpy, the standard library
and :mod:`mu.y4m` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mu.y4m import Planes, Video

__all__ = ["MAX_RADIUS", "DenoiseError", "filter_frames", "filter_video", "weights"]

MAX_RADIUS = 4
"""The largest radius (the binary sums in 16 bits: ``255 * 4**r + 4**r // 2 < 65536``)."""


class DenoiseError(ValueError):
    """A radius out of range, too few neighbouring frames, or frames of different shapes."""


def weights(r: int) -> tuple[int, ...]:
    """The ``2r + 1`` binomial weights of radius ``r`` (``C(2r, k)``; they sum to ``4**r``).

    Raises:
        DenoiseError: ``r`` is not in ``0 .. MAX_RADIUS``.
    """
    if not 0 <= r <= MAX_RADIUS:
        raise DenoiseError(f"radius {r} is not in 0..{MAX_RADIUS}")
    return tuple(math.comb(2 * r, k) for k in range(2 * r + 1))


def _shapes(frame: Planes) -> tuple[tuple[int, ...], ...]:
    return tuple(plane.shape for plane in frame)


def filter_frames(
    frames: Sequence[Planes],
    r: int,
    prev: Sequence[Planes] | None = None,
    next: Sequence[Planes] | None = None,
) -> list[Planes]:
    """Filter a chunk of frames with radius ``r``.

    Args:
        frames: the chunk, each frame ``(y, cb, cr)`` ``uint8`` arrays as
            :func:`mu.y4m.read_y4m` gives them.
        r: the radius, ``0 .. MAX_RADIUS``.
        prev: frames just before the chunk (the last ``r`` are used), or ``None`` when the
            chunk starts the video (its first frame is repeated before it).
        next: frames just after the chunk (the first ``r`` are used), or ``None`` when the
            chunk ends the video (its last frame is repeated after it).

    Returns:
        One filtered frame per frame of ``frames`` (none for an empty chunk).

    Raises:
        DenoiseError: bad radius, fewer than ``r`` frames in ``prev`` or ``next``, frames of
            different plane shapes.
    """
    w = weights(r)
    for name, given in (("prev", prev), ("next", next)):
        if given is not None and len(given) < r:
            raise DenoiseError(f"{name} holds {len(given)} frames, radius {r} needs {r}")
    if not frames:
        return []
    before = list(prev[len(prev) - r :]) if prev is not None and r else []
    after = list(next[:r]) if next is not None else []
    if prev is None:
        before = [frames[0]] * r
    if next is None:
        after = [frames[-1]] * r
    sequence = [*before, *frames, *after]
    shape = _shapes(frames[0])
    for index, frame in enumerate(sequence):
        if _shapes(frame) != shape:
            raise DenoiseError(f"frame {index - r}: plane shapes {_shapes(frame)} are not {shape}")
    total = sum(w)
    out_planes = []
    for p in range(3):
        stack = np.stack([frame[p] for frame in sequence]).astype(np.uint32)
        acc = np.full((len(frames), *shape[p]), total // 2, np.uint32)
        for k, weight in enumerate(w):
            acc += np.uint32(weight) * stack[k : k + len(frames)]
        out_planes.append((acc // np.uint32(total)).astype(np.uint8))
    return [(out_planes[0][t], out_planes[1][t], out_planes[2][t]) for t in range(len(frames))]


def filter_video(video: Video, r: int) -> Video:
    """The whole video filtered in one piece (its edge frames repeated beyond its ends).

    Raises:
        DenoiseError: bad radius or frames of different shapes.
    """
    return Video(
        video.width,
        video.height,
        video.fps,
        video.aspect,
        video.chroma,
        filter_frames(video.frames, r),
    )
