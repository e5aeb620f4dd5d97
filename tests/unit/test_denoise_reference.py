"""The reference temporal filter of mu.denoise: the issue's weights, a hand computation, a
naive per-sample loop, and chunks filtered with their neighbours' frames equal to the whole
video filtered in one piece."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mu.denoise import MAX_RADIUS, DenoiseError, filter_frames, filter_video, weights
from mu.y4m import Planes, Video, chroma_size


def make_frames(
    count: int, width: int, height: int, chroma: str, seed: int, extreme: bool = False
) -> list[Planes]:
    """``count`` random frames; ``extreme`` draws samples from 0, 1, 254, 255 only (sums at
    their largest and rounding ties)."""
    rng = np.random.default_rng(seed)
    cw, ch = chroma_size(width, height, chroma)

    def plane(h: int, w: int) -> np.ndarray:
        if extreme:
            return rng.choice(np.array([0, 1, 254, 255], np.uint8), (h, w))
        return rng.integers(0, 256, (h, w), dtype=np.uint8)

    return [(plane(height, width), plane(ch, cw), plane(ch, cw)) for _ in range(count)]


@st.composite
def videos(draw: st.DrawFn, min_frames: int = 0, max_frames: int = 6) -> Video:
    """Small random videos of every chroma format, odd and even sizes."""
    chroma = draw(st.sampled_from(["420", "422", "444"]))
    width, height = draw(st.integers(1, 9)), draw(st.integers(1, 7))
    count = draw(st.integers(min_frames, max_frames))
    frames = make_frames(
        count, width, height, chroma, draw(st.integers(0, 2**32 - 1)), draw(st.booleans())
    )
    fps = (draw(st.integers(1, 60)), draw(st.integers(1, 1001)))
    return Video(width, height, fps, (1, 1), chroma, frames)


def naive(
    frames: list[Planes], r: int, prev: list[Planes] | None, nxt: list[Planes] | None
) -> list[Planes]:
    """The definition, one sample at a time in Python integers."""
    w = [math.comb(2 * r, k) for k in range(2 * r + 1)]
    total = sum(w)
    n = len(frames)

    def source(i: int) -> Planes:  # i: index relative to the chunk's first frame
        if i < 0:
            return prev[len(prev) + i] if prev is not None else frames[0]
        if i >= n:
            return nxt[i - n] if nxt is not None else frames[-1]
        return frames[i]

    out = []
    for t in range(n):
        planes = []
        for p in range(3):
            h, wd = frames[0][p].shape
            plane = np.zeros((h, wd), np.uint8)
            for y in range(h):
                for x in range(wd):
                    acc = sum(w[k] * int(source(t - r + k)[p][y, x]) for k in range(2 * r + 1))
                    plane[y, x] = (acc + total // 2) // total
            planes.append(plane)
        out.append((planes[0], planes[1], planes[2]))
    return out


def assert_frames_equal(a: list[Planes], b: list[Planes]) -> None:
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        for pa, pb in zip(fa, fb, strict=True):
            assert pa.dtype == np.uint8 and pa.shape == pb.shape
            np.testing.assert_array_equal(pa, pb)


def test_weights_are_the_issues() -> None:
    assert weights(0) == (1,)
    assert weights(1) == (1, 2, 1)
    assert weights(2) == (1, 4, 6, 4, 1)
    assert weights(3) == (1, 6, 15, 20, 15, 6, 1)
    for r in range(MAX_RADIUS + 1):
        assert sum(weights(r)) == 4**r
        # The binary sums in 16 bits: the largest sum plus the rounding term must fit.
        assert 255 * 4**r + 4**r // 2 < 2**16


@pytest.mark.parametrize("r", [-1, MAX_RADIUS + 1])
def test_radius_out_of_range(r: int) -> None:
    with pytest.raises(DenoiseError, match=f"radius {r} is not in 0..{MAX_RADIUS}"):
        weights(r)


def luma_frames(values: list[int]) -> list[Planes]:
    """1x1 4:4:4 frames whose three planes all hold the given value."""
    return [tuple(np.full((1, 1), v, np.uint8) for _ in range(3)) for v in values]  # type: ignore[misc]


def luma(frames: list[Planes]) -> list[int]:
    return [int(f[0][0, 0]) for f in frames]


def test_hand_computation_radius_one() -> None:
    # Edges repeated: the sequence is 10 10 20 31 31.
    # t0: (10 + 2*10 + 20 + 2) // 4 = 52 // 4 = 13
    # t1: (10 + 2*20 + 31 + 2) // 4 = 83 // 4 = 20
    # t2: (20 + 2*31 + 31 + 2) // 4 = 115 // 4 = 28
    assert luma(filter_frames(luma_frames([10, 20, 31]), 1)) == [13, 20, 28]


def test_hand_computation_radius_two_with_neighbours() -> None:
    # prev's last two frames (7, 9), the chunk (100, 0), next's first two (50, 3):
    # t0: 7 + 4*9 + 6*100 + 4*0 + 50 = 693, (693 + 8) // 16 = 43
    # t1: 9 + 4*100 + 6*0 + 4*50 + 3 = 612, (612 + 8) // 16 = 38
    prev, nxt = luma_frames([255, 7, 9]), luma_frames([50, 3, 200])
    assert luma(filter_frames(luma_frames([100, 0]), 2, prev, nxt)) == [43, 38]


def test_rounding_is_half_up() -> None:
    # 0 1 0 at r = 1: (0 + 2*1 + 0 + 2) // 4 = 1, an exact half rounds up.
    zero = luma_frames([0])
    assert luma(filter_frames(luma_frames([0, 1, 0]), 1, zero, zero)) == [0, 1, 0]
    # 0 0 1 0 0 at r = 2, middle frame: 6/16 rounds down to 0.
    assert luma(filter_frames(luma_frames([0, 0, 1, 0, 0]), 2))[2] == 0
    # 0 1 0 1 0 at r = 2, middle frame: (4 + 4)/16, an exact half, rounds up to 1.
    assert luma(filter_frames(luma_frames([0, 1, 0, 1, 0]), 2))[2] == 1
    # 255 everywhere stays 255 (no overflow).
    assert luma(filter_frames(luma_frames([255] * 4), 3)) == [255] * 4


def test_radius_zero_copies_and_empty_chunk() -> None:
    frames = make_frames(3, 4, 3, "420", 5)
    assert_frames_equal(filter_frames(frames, 0, prev=[], next=[]), frames)
    assert filter_frames([], 2) == []


def test_too_few_neighbours_and_shape_mismatch() -> None:
    frames = make_frames(3, 4, 3, "420", 1)
    with pytest.raises(DenoiseError, match="prev holds 1 frames, radius 2 needs 2"):
        filter_frames(frames, 2, prev=frames[:1])
    with pytest.raises(DenoiseError, match="next holds 0 frames"):
        filter_frames(frames, 1, next=[])
    with pytest.raises(DenoiseError, match="next holds 0 frames"):
        filter_frames([], 1, next=[])
    with pytest.raises(DenoiseError, match="plane shapes"):
        filter_frames(frames, 1, next=make_frames(1, 4, 3, "444", 2))


@settings(max_examples=60, deadline=None)
@given(
    video=videos(min_frames=1),
    r=st.integers(0, MAX_RADIUS),
    with_prev=st.booleans(),
    with_next=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_equals_naive_loop(
    video: Video, r: int, with_prev: bool, with_next: bool, seed: int
) -> None:
    prev = (
        make_frames(r + seed % 3, video.width, video.height, video.chroma, seed)
        if with_prev
        else None
    )
    nxt = (
        make_frames(r + seed % 2, video.width, video.height, video.chroma, seed + 1)
        if with_next
        else None
    )
    assert_frames_equal(
        filter_frames(video.frames, r, prev, nxt), naive(video.frames, r, prev, nxt)
    )


@settings(max_examples=60, deadline=None)
@given(video=videos(min_frames=1, max_frames=12), data=st.data())
def test_chunks_with_neighbours_equal_the_whole(video: Video, data: st.DataObject) -> None:
    """The exchange's promise: each chunk filtered with r frames of its neighbours, the outputs
    concatenated, is the whole video filtered in one piece (r <= the chunk length)."""
    n = len(video.frames)
    size = data.draw(st.integers(1, n), label="chunk length")
    r = data.draw(st.integers(0, min(size, MAX_RADIUS)), label="r")
    chunks = [video.frames[i : i + size] for i in range(0, n, size)]
    out: list[Planes] = []
    for i, chunk in enumerate(chunks):
        prev = chunks[i - 1] if i else None
        # The last chunk may be shorter than r: the frames after a chunk are then those of
        # the next chunks, up to the video's end, and the last frame repeated.
        if i + 1 < len(chunks):
            after = [f for c in chunks[i + 1 :] for f in c][:r]
            nxt = after + [video.frames[-1]] * (r - len(after))
        else:
            nxt = None
        out.extend(filter_frames(chunk, r, prev, nxt))
    whole = filter_video(video, r)
    assert (whole.width, whole.height, whole.chroma, whole.fps) == (
        video.width,
        video.height,
        video.chroma,
        video.fps,
    )
    assert_frames_equal(out, whole.frames)
