"""The reference conversion and the Y4M reader/writer of mu.y4m."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mu.y4m import (
    Video,
    Y4MError,
    chroma_size,
    convert_frame,
    convert_planes,
    psnr,
    read_y4m,
    rgb_to_ycbcr_float,
    write_y4m,
)


def solid(r: int, g: int, b: int, depth: int = 8, w: int = 3, h: int = 3) -> np.ndarray:
    return np.tile(np.array([r, g, b], np.uint16), (h, w, 1))


@pytest.mark.parametrize("depth", [8, 16])
def test_black_white_and_primaries_hit_studio_range(depth: int) -> None:
    top = (1 << depth) - 1
    assert [p[0, 0] for p in convert_frame(solid(0, 0, 0, depth), depth)] == [16, 128, 128]
    assert [p[0, 0] for p in convert_frame(solid(top, top, top, depth), depth)] == [235, 128, 128]
    # Pure blue reaches the top of Cb, pure red the top of Cr (BT.709 studio range).
    assert convert_frame(solid(0, 0, top, depth), depth)[1][0, 0] == 240
    assert convert_frame(solid(top, 0, 0, depth), depth)[2][0, 0] == 240
    assert convert_frame(solid(top, top, 0, depth), depth)[1][0, 0] == 16
    assert convert_frame(solid(0, top, top, depth), depth)[2][0, 0] == 16
    y, _, _ = convert_planes(solid(top, 0, 0, depth), depth)
    assert y[0, 0] == pytest.approx(16 + 219 * 0.2126)


def test_sixteen_bit_input_is_not_truncated() -> None:
    # 16-bit values that share their high byte give different unrounded luma.
    a = convert_planes(solid(0x8000, 0x8000, 0x8000, 16), 16)[0][0, 0]
    b = convert_planes(solid(0x80FF, 0x80FF, 0x80FF, 16), 16)[0][0, 0]
    assert b - a == pytest.approx(219 * 255 / 65535)


def test_eight_bit_matches_sixteen_bit_scaled_by_257() -> None:
    rng = np.random.default_rng(1)
    rgb8 = rng.integers(0, 256, (5, 7, 3)).astype(np.uint16)
    for chroma in ("420", "422", "444"):
        for p8, p16 in zip(
            convert_planes(rgb8, 8, chroma), convert_planes(rgb8 * 257, 16, chroma), strict=True
        ):
            np.testing.assert_allclose(p8, p16, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    w=st.integers(1, 9),
    h=st.integers(1, 9),
    depth=st.sampled_from([1, 2, 4, 8, 10, 12, 16]),
    chroma=st.sampled_from(["420", "422", "444"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_integer_samples_are_normalised_then_converted(
    w: int, h: int, depth: int, chroma: str, seed: int
) -> None:
    top = (1 << depth) - 1
    rgb = np.random.default_rng(seed).integers(0, top + 1, (h, w, 3)).astype(np.uint16)
    for got, want in zip(
        convert_planes(rgb, depth, chroma),
        rgb_to_ycbcr_float(rgb / float(top), chroma),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_float_conversion_of_grey_and_mid_values() -> None:
    grey = np.full((2, 3, 3), 0.5)
    y, cb, cr = rgb_to_ycbcr_float(grey, "444")
    np.testing.assert_allclose(y, 16 + 219 * 0.5)
    np.testing.assert_allclose(cb, 128.0)
    np.testing.assert_allclose(cr, 128.0)
    # 4:2:0 chroma averages R'G'B' before converting: a black/white checkerboard is grey.
    board = np.indices((2, 2)).sum(axis=0) % 2
    rgb = np.repeat(board[..., None].astype(np.float64), 3, axis=2)
    y, cb, cr = rgb_to_ycbcr_float(rgb, "420")
    assert y.shape == (2, 2) and cb.shape == cr.shape == (1, 1)
    assert sorted(y.ravel().tolist()) == pytest.approx([16, 16, 235, 235])
    assert cb[0, 0] == pytest.approx(128.0) and cr[0, 0] == pytest.approx(128.0)
    with pytest.raises(Y4MError):
        rgb_to_ycbcr_float(np.zeros((2, 2, 4)))


@pytest.mark.parametrize(
    ("chroma", "w", "h", "expected"),
    [("420", 5, 3, (3, 2)), ("422", 5, 3, (3, 3)), ("444", 5, 3, (5, 3)), ("420", 1, 1, (1, 1))],
)
def test_chroma_plane_sizes(chroma: str, w: int, h: int, expected: tuple[int, int]) -> None:
    assert chroma_size(w, h, chroma) == expected
    rgb = np.zeros((h, w, 3), np.uint8)
    _, cb, cr = convert_frame(rgb, 8, chroma)
    assert cb.shape == cr.shape == (expected[1], expected[0])


def test_box_average_replicates_the_last_column_and_row() -> None:
    # 3x3 blue ramp: the last chroma sample averages column 2 with itself.
    rgb = np.zeros((3, 3, 3), np.uint16)
    rgb[:, 2, 2] = 255
    _, cb, _ = convert_planes(rgb, 8, "420")
    full = convert_planes(solid(0, 0, 255), 8, "444")[1][0, 0]
    assert cb[0, 1] == pytest.approx(full)
    assert cb[1, 1] == pytest.approx(full)
    assert cb[0, 0] == pytest.approx(128.0)


def test_bad_arguments_raise() -> None:
    with pytest.raises(Y4MError):
        convert_frame(np.zeros((2, 2)), 8)
    with pytest.raises(Y4MError):
        convert_frame(np.zeros((2, 2, 3)), 17)
    with pytest.raises(Y4MError):
        convert_frame(np.zeros((2, 2, 3)), 8, "411")
    with pytest.raises(Y4MError):
        psnr(np.zeros(3), np.zeros(4))


def test_psnr() -> None:
    a = np.zeros((4, 4), np.uint8)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[0, 0] = 4  # MSE 1
    assert psnr(a, b) == pytest.approx(20 * math.log10(255))


@settings(max_examples=30, deadline=None)
@given(
    w=st.integers(1, 20),
    h=st.integers(1, 20),
    chroma=st.sampled_from(["420", "422", "444"]),
    count=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_write_then_read_round_trips(
    tmp_path_factory: pytest.TempPathFactory, w: int, h: int, chroma: str, count: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    cw, ch = chroma_size(w, h, chroma)
    frames = [
        (
            rng.integers(0, 256, (h, w), dtype=np.uint8),
            rng.integers(0, 256, (ch, cw), dtype=np.uint8),
            rng.integers(0, 256, (ch, cw), dtype=np.uint8),
        )
        for _ in range(count)
    ]
    path = tmp_path_factory.mktemp("y4m") / "v.y4m"
    write_y4m(path, Video(w, h, (30000, 1001), (1, 1), chroma, frames))
    header = path.read_bytes().split(b"\n", 1)[0]
    tag = {"420": b"C420jpeg", "422": b"C422jpeg", "444": b"C444"}[chroma]
    assert header == b"YUV4MPEG2 W%d H%d F30000:1001 Ip A1:1 " % (w, h) + tag
    video = read_y4m(path)
    assert (video.width, video.height, video.fps, video.aspect, video.chroma) == (
        w,
        h,
        (30000, 1001),
        (1, 1),
        chroma,
    )
    assert len(video.frames) == count
    for got, want in zip(video.frames, frames, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_reader_rejects_bad_streams(tmp_path: Path) -> None:
    bad = tmp_path / "bad.y4m"
    bad.write_bytes(b"NOTY4M\n")
    with pytest.raises(Y4MError, match="not a Y4M"):
        read_y4m(bad)
    bad.write_bytes(b"YUV4MPEG2 W2 H2 C444\nFRAME\n" + bytes(11))
    with pytest.raises(Y4MError, match="truncated"):
        read_y4m(bad)
    bad.write_bytes(b"YUV4MPEG2 W2 H2 C444\nFRAMX\n" + bytes(12))
    with pytest.raises(Y4MError, match="frame header"):
        read_y4m(bad)
    bad.write_bytes(b"YUV4MPEG2 W2 H2 Cmono\n")
    with pytest.raises(Y4MError, match="colour space"):
        read_y4m(bad)
    ok = tmp_path / "ok.y4m"
    ok.write_bytes(b"YUV4MPEG2 W2 H2 C420mpeg2 XYSCSS=420MPEG2\nFRAME Ixyz\n" + bytes(6))
    video = read_y4m(ok)
    assert video.chroma == "420" and len(video.frames) == 1
