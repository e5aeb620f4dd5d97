"""The real static png2y4m binary against the mu.y4m reference: every PNG colour type and bit
depth, dither statistics, thread independence, -i/-d semantics and every documented error."""

from __future__ import annotations

import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import png
import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mu.y4m import chroma_size, convert_frame, convert_planes, psnr, read_y4m

CHROMA_FLAG = {"420": [], "422": ["--chroma-422"], "444": ["--chroma-444"]}

# (colour type, bit depths pypng can write for it)
KINDS = [
    ("gray", (1, 2, 4, 8, 16)),
    ("gray_alpha", (8, 16)),
    ("palette", (1, 2, 4, 8)),
    ("rgb", (8, 16)),
    ("rgba", (8, 16)),
]


@dataclass
class Image:
    """A PNG as written, plus the R'G'B' samples and depth the reference converts."""

    rgb: npt.NDArray[np.uint16]
    depth: int


def write_image(
    path: Path, kind: str, depth: int, w: int, h: int, seed: int, interlace: bool
) -> Image:
    """Write a random PNG of one colour type with pypng; return what it shows."""
    rng = np.random.default_rng(seed)
    top = (1 << depth) - 1
    if kind == "palette":
        n = 1 << depth
        palette = rng.integers(0, 256, (n, 3)).astype(np.uint16)
        index = rng.integers(0, n, (h, w))
        writer = png.Writer(
            w,
            h,
            palette=[tuple(int(v) for v in p) for p in palette],
            bitdepth=depth,
            interlace=interlace,
        )
        with path.open("wb") as f:
            writer.write(f, index.tolist())
        return Image(palette[index], 8)
    # Smooth ramps plus noise, so both flat and busy areas are exercised.
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 7 + yy * 5)[..., None] * np.array([1, 2, 3]) * max(top // 97, 1)
    noise = rng.integers(0, top + 1, (h, w, 3))
    rgb = ((base + noise * rng.integers(0, 2)) % (top + 1)).astype(np.uint16)
    alpha = rng.integers(0, top + 1, (h, w, 1)).astype(np.uint16)
    if kind.startswith("gray"):
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
        planes = rgb[..., :1]
    else:
        planes = rgb
    if kind.endswith("alpha") or kind == "rgba":
        planes = np.concatenate([planes, alpha], axis=2)
    channels = planes.shape[2]
    writer = png.Writer(
        w,
        h,
        greyscale=kind.startswith("gray"),
        alpha=channels in (2, 4),
        bitdepth=depth,
        interlace=interlace,
    )
    with path.open("wb") as f:
        writer.write(f, planes.reshape(h, w * channels).tolist())
    return Image(rgb, depth)


def run(binary: Path, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(binary), *map(str, args)], capture_output=True, text=True, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    return result


def assert_one_error_line(result: subprocess.CompletedProcess[str], name: str) -> None:
    assert result.returncode not in (0, *range(-64, 0)), result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"png2y4m: {name}: "), lines[0]


def frame_bytes(w: int, h: int, chroma: str = "420") -> int:
    cw, ch = chroma_size(w, h, chroma)
    return len(b"FRAME\n") + w * h + 2 * cw * ch


def header(w: int, h: int, tag: str = "C420jpeg", fps: str = "24:1", aspect: str = "0:0") -> bytes:
    return f"YUV4MPEG2 W{w} H{h} F{fps} Ip A{aspect} {tag}\n".encode()


def frames_of(
    directory: Path, count: int, w: int, h: int, depth: int = 16, start: int = 1
) -> list[Image]:
    return [
        write_image(directory / f"{start + i:08d}.png", "rgb", depth, w, h, 100 + i, False)
        for i in range(count)
    ]


# ------------------------------------------------------------------ conversion accuracy


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind_depth=st.sampled_from([(k, d) for k, ds in KINDS for d in ds]),
    w=st.integers(1, 67),
    h=st.integers(1, 67),
    interlace=st.booleans(),
    chroma=st.sampled_from(["420", "422", "444"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_no_dither_matches_reference(
    png2y4m_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
    kind_depth: tuple[str, int],
    w: int,
    h: int,
    interlace: bool,
    chroma: str,
    seed: int,
) -> None:
    kind, depth = kind_depth
    tmp = tmp_path_factory.mktemp("nd")
    image = write_image(tmp / "in.png", kind, depth, w, h, seed, interlace)
    run(png2y4m_binary, "--no-dither", *CHROMA_FLAG[chroma], "-o", tmp / "out.y4m", tmp / "in.png")
    video = read_y4m(tmp / "out.y4m")
    assert (video.width, video.height, video.chroma, len(video.frames)) == (w, h, chroma, 1)
    reference = convert_frame(image.rgb, image.depth, chroma)
    total = exact = 0
    for got, want in zip(video.frames[0], reference, strict=True):
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1
        total += diff.size
        exact += int((diff == 0).sum())
    assert exact >= 0.99 * total


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    w=st.integers(160, 200),  # chroma planes of >= 4800 samples: the mean of the noise
    h=st.integers(120, 160),  # is then within 0.05 by more than 6 standard errors
    chroma=st.sampled_from(["420", "422", "444"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_dither_is_unbiased_and_quiet(
    png2y4m_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
    w: int,
    h: int,
    chroma: str,
    seed: int,
) -> None:
    tmp = tmp_path_factory.mktemp("dither")
    image = write_image(tmp / "in.png", "rgb", 16, w, h, seed, False)
    run(png2y4m_binary, *CHROMA_FLAG[chroma], "-o", tmp / "out.y4m", tmp / "in.png")
    frame = read_y4m(tmp / "out.y4m").frames[0]
    for got, want in zip(frame, convert_planes(image.rgb, 16, chroma), strict=True):
        err = got.astype(np.float64) - np.clip(want, 0, 255)
        assert abs(float(err.mean())) <= 0.05
        assert psnr(got, np.clip(want, 0, 255)) >= 50.0
        assert np.abs(err).max() < 1.5


def write_filtered(path: Path, samples: npt.NDArray[np.uint16], depth: int, seed: int) -> None:
    """Write ``samples`` (h, w, channels) as a PNG whose rows use random filter types (pypng
    only writes filter 0), its image data split over several IDAT chunks."""
    h, w, channels = samples.shape
    raw = samples.astype(">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(h, -1)
    bpp = channels * depth // 8
    x = raw.astype(np.int32)
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]
    b = np.zeros_like(x)
    b[1:] = x[:-1]
    c = np.zeros_like(x)
    c[1:, bpp:] = x[:-1, :-bpp]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    options = np.stack([x, x - a, x - b, x - (a + b) // 2, x - paeth]) & 0xFF
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 5, h)
    rows = np.concatenate([kinds[:, None], options[kinds, np.arange(h)]], axis=1)
    data = zlib.compress(rows.astype(np.uint8).tobytes(), int(rng.integers(0, 10)))
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    cut = sorted(set(rng.integers(0, len(data) + 1, int(rng.integers(0, 4))).tolist()))
    pieces = [data[i:j] for i, j in zip([0, *cut], [*cut, len(data)], strict=True)]
    text = chunk(b"tEXt", b"Comment\x00filtered")
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + text
        + b"".join(chunk(b"IDAT", piece) for piece in pieces)
        + chunk(b"IEND", b"")
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    channels=st.sampled_from([1, 2, 3, 4]),
    depth=st.sampled_from([8, 16]),
    w=st.integers(1, 67),
    h=st.integers(1, 67),
    chroma=st.sampled_from(["420", "422", "444"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_row_filters_and_split_idat_decode_exactly(
    png2y4m_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
    channels: int,
    depth: int,
    w: int,
    h: int,
    chroma: str,
    seed: int,
) -> None:
    """Every filter type through the fast path gives the bytes that libpng's path (the same
    image interlaced) and an unfiltered copy give, dither included."""
    tmp = tmp_path_factory.mktemp("filters")
    rng = np.random.default_rng(seed)
    top = (1 << depth) - 1
    smooth = (np.add.outer(np.arange(h), np.arange(w)) * (top // 130))[..., None]
    samples = ((smooth + rng.integers(0, top // 8 + 1, (h, w, channels))) % (top + 1)).astype(
        np.uint16
    )
    write_filtered(tmp / "f.png", samples, depth, seed)
    for name, interlace in (("plain.png", False), ("adam7.png", True)):
        writer = png.Writer(
            w,
            h,
            greyscale=channels < 3,
            alpha=channels in (2, 4),
            bitdepth=depth,
            interlace=interlace,
        )
        with (tmp / name).open("wb") as f:
            writer.write(f, samples.reshape(h, w * channels).tolist())
    outputs = []
    for name in ("f.png", "plain.png", "adam7.png"):
        run(png2y4m_binary, *CHROMA_FLAG[chroma], "-o", tmp / f"{name}.y4m", tmp / name)
        outputs.append((tmp / f"{name}.y4m").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_dither_differs_from_rounding_and_is_deterministic(
    png2y4m_binary: Path, tmp_path: Path
) -> None:
    write_image(tmp_path / "in.png", "rgb", 16, 40, 30, 5, False)
    run(png2y4m_binary, "-o", tmp_path / "a.y4m", tmp_path / "in.png")
    run(png2y4m_binary, "-o", tmp_path / "b.y4m", tmp_path / "in.png")
    run(png2y4m_binary, "--no-dither", "-o", tmp_path / "c.y4m", tmp_path / "in.png")
    assert (tmp_path / "a.y4m").read_bytes() == (tmp_path / "b.y4m").read_bytes()
    assert (tmp_path / "a.y4m").read_bytes() != (tmp_path / "c.y4m").read_bytes()


@pytest.mark.parametrize("dither", [[], ["--no-dither"]])
@pytest.mark.parametrize("chroma", ["420", "444"])
def test_threads_give_identical_output(
    png2y4m_binary: Path, tmp_path: Path, dither: list[str], chroma: str
) -> None:
    frames_of(tmp_path, 3, 61, 37)
    outputs = []
    for threads in ("1", "2", "5"):
        out = tmp_path / f"t{threads}.y4m"
        run(
            png2y4m_binary,
            *dither,
            *CHROMA_FLAG[chroma],
            "--threads",
            threads,
            "-o",
            out,
            tmp_path / "%08d.png",
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    # A single file is split by rows instead of by frames; the bytes are the same.
    singles = []
    for threads in ("1", "3", "64"):
        out = tmp_path / f"s{threads}.y4m"
        run(
            png2y4m_binary,
            *dither,
            *CHROMA_FLAG[chroma],
            "--threads",
            threads,
            "-o",
            out,
            tmp_path / "00000002.png",
        )
        singles.append(out.read_bytes())
    assert singles[0] == singles[1] == singles[2]


def test_eight_and_sixteen_bit_agree(png2y4m_binary: Path, tmp_path: Path) -> None:
    rgb8 = np.random.default_rng(3).integers(0, 256, (9, 11, 3)).astype(np.uint16)
    for depth, data in ((8, rgb8), (16, rgb8 * 257)):
        with (tmp_path / f"{depth}.png").open("wb") as f:
            png.Writer(11, 9, greyscale=False, bitdepth=depth).write(
                f, data.reshape(9, 33).tolist()
            )
        run(png2y4m_binary, "-o", tmp_path / f"{depth}.y4m", tmp_path / f"{depth}.png")
    assert (tmp_path / "8.y4m").read_bytes() == (tmp_path / "16.y4m").read_bytes()


# ------------------------------------------------------------------ stream layout, -i, -d


def test_pattern_starts_at_lowest_and_stops_at_gap(png2y4m_binary: Path, tmp_path: Path) -> None:
    images = frames_of(tmp_path, 3, 5, 3, start=7)
    write_image(tmp_path / "00000011.png", "rgb", 16, 5, 3, 1, False)  # after a gap
    (tmp_path / "0000003.png").write_bytes(b"not a frame of this pattern")
    out = tmp_path / "out.y4m"
    run(
        png2y4m_binary,
        "--no-dither",
        "-f",
        "30000",
        "-F",
        "1001",
        "-s",
        "1",
        "-S",
        "1",
        "-o",
        out,
        tmp_path / "%08d.png",
    )
    data = out.read_bytes()
    assert data.startswith(header(5, 3, fps="30000:1001", aspect="1:1"))
    assert len(data) == len(header(5, 3, fps="30000:1001", aspect="1:1")) + 3 * frame_bytes(5, 3)
    video = read_y4m(out)
    for frame, image in zip(video.frames, images, strict=True):
        for got, want in zip(frame, convert_frame(image.rgb, 16), strict=True):
            assert np.abs(got.astype(int) - want).max() <= 1


@pytest.mark.parametrize(
    ("chroma", "tag"), [("420", "C420jpeg"), ("422", "C422jpeg"), ("444", "C444")]
)
def test_header_and_plane_sizes(
    png2y4m_binary: Path, tmp_path: Path, chroma: str, tag: str
) -> None:
    write_image(tmp_path / "in.png", "rgb", 8, 7, 5, 1, True)
    out = tmp_path / "out.y4m"
    run(png2y4m_binary, *CHROMA_FLAG[chroma], "-o", out, tmp_path / "in.png")
    assert out.read_bytes() == header(7, 5, tag) + out.read_bytes()[len(header(7, 5, tag)) :]
    assert len(out.read_bytes()) == len(header(7, 5, tag)) + frame_bytes(7, 5, chroma)
    assert out.read_bytes()[len(header(7, 5, tag)) :].startswith(b"FRAME\n")


def test_incremental_appends_with_one_header(png2y4m_binary: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.y4m"
    out.write_bytes(b"")  # an empty file gets a header too
    for i in range(1, 5):
        write_image(tmp_path / f"{i:08d}.png", "rgb", 16, 9, 7, i, False)
        run(png2y4m_binary, "-i", "-d", "-o", out, tmp_path / "%08d.png")
        assert not (tmp_path / f"{i:08d}.png").exists()
    data = out.read_bytes()
    assert data.count(b"YUV4MPEG2") == 1
    assert len(data) == len(header(9, 7)) + 4 * frame_bytes(9, 7)
    assert len(read_y4m(out).frames) == 4
    # Without -i the output is replaced.
    write_image(tmp_path / "x.png", "rgb", 16, 9, 7, 1, False)
    run(png2y4m_binary, "-o", out, tmp_path / "x.png")
    assert len(out.read_bytes()) == len(header(9, 7)) + frame_bytes(9, 7)


@pytest.mark.parametrize("existing", ["size", "chroma", "garbage"])
def test_incremental_refuses_mismatched_file(
    png2y4m_binary: Path, tmp_path: Path, existing: str
) -> None:
    out = tmp_path / "out.y4m"
    write_image(tmp_path / "a.png", "rgb", 8, 8, 6, 1, False)
    if existing == "garbage":
        out.write_bytes(b"hello world\n")
    else:
        src = tmp_path / "b.png"
        write_image(src, "rgb", 8, 8 if existing == "chroma" else 10, 6, 2, False)
        run(png2y4m_binary, *(["--chroma-444"] if existing == "chroma" else []), "-o", out, src)
    before = out.read_bytes()
    result = run(png2y4m_binary, "-i", "-d", "-o", out, tmp_path / "a.png", check=False)
    assert_one_error_line(result, str(out))
    assert out.read_bytes() == before
    assert (tmp_path / "a.png").exists()


def test_delete_removes_only_written_frames(png2y4m_binary: Path, tmp_path: Path) -> None:
    frames_of(tmp_path, 2, 6, 4)
    (tmp_path / "00000003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    frames_of(tmp_path, 1, 6, 4, start=4)
    out = tmp_path / "out.y4m"
    result = run(png2y4m_binary, "-d", "-o", out, tmp_path / "%08d.png", check=False)
    assert_one_error_line(result, str(tmp_path / "00000003.png"))
    assert not (tmp_path / "00000001.png").exists()
    assert not (tmp_path / "00000002.png").exists()
    assert (tmp_path / "00000003.png").exists() and (tmp_path / "00000004.png").exists()
    assert len(out.read_bytes()) == len(header(6, 4)) + 2 * frame_bytes(6, 4)


# ------------------------------------------------------------------ errors


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def small_png(tmp_path: Path) -> bytes:
    write_image(tmp_path / "ok.png", "rgb", 8, 16, 16, 9, False)
    return (tmp_path / "ok.png").read_bytes()


def test_missing_input(png2y4m_binary: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.y4m"
    assert_one_error_line(
        run(png2y4m_binary, "-o", out, tmp_path / "no.png", check=False), str(tmp_path / "no.png")
    )
    pattern = str(tmp_path / "%08d.png")
    assert_one_error_line(run(png2y4m_binary, "-o", out, pattern, check=False), pattern)
    assert not out.exists()


def test_not_a_png(png2y4m_binary: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"GIF89a" + bytes(100))
    result = run(png2y4m_binary, "-o", tmp_path / "o.y4m", bad, check=False)
    assert_one_error_line(result, str(bad))
    assert "not a PNG" in result.stderr


@pytest.mark.parametrize("damage", ["truncated", "crc", "zlib", "no-idat", "empty"])
def test_corrupt_png(png2y4m_binary: Path, tmp_path: Path, damage: str) -> None:
    data = small_png(tmp_path)
    ihdr_end = 8 + 25
    idat = data.index(b"IDAT") - 4
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "crc":
        data = data[: idat + 10] + bytes([data[idat + 10] ^ 0x40]) + data[idat + 11 :]
    elif damage == "zlib":
        pixels = zlib.compress(b"\x00" + bytes(48))[:-6] + b"\xff" * 12
        data = data[:ihdr_end] + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    elif damage == "no-idat":
        data = data[:ihdr_end] + chunk(b"IEND", b"")
    else:
        data = b""
    bad = tmp_path / "bad.png"
    bad.write_bytes(data)
    out = tmp_path / "o.y4m"
    result = run(png2y4m_binary, "-o", out, bad, check=False)
    assert_one_error_line(result, str(bad))
    expected = {
        "truncated": "truncated PNG",
        "crc": "CRC error",
        "zlib": "corrupt PNG: IDAT",
        "no-idat": "corrupt PNG",
        "empty": "not a PNG",
    }[damage]
    assert expected in result.stderr
    assert not out.exists()


def raw_png(w: int, h: int, depth: int, colour: int, pixels: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("depth", "colour"), [(16, 2), (16, 6), (1, 0), (8, 3)])
def test_header_claiming_more_pixels_than_the_file_can_hold(
    png2y4m_binary: Path, tmp_path: Path, depth: int, colour: int
) -> None:
    """A tiny file whose header says 65536x65536 is refused before any allocation."""
    data = raw_png(65536, 65536, depth, colour, zlib.compress(bytes(1000)))
    if colour == 3:
        data = data[:33] + chunk(b"PLTE", bytes(6)) + data[33:]
    bad = tmp_path / "big.png"
    bad.write_bytes(data)
    result = run(png2y4m_binary, "-o", tmp_path / "o.y4m", bad, check=False)
    assert_one_error_line(result, str(bad))
    assert "too short for the image size" in result.stderr


def test_maximally_compressed_frame_converts(png2y4m_binary: Path, tmp_path: Path) -> None:
    """The size bound leaves room for deflate's best ratio (flat black, zlib level 9)."""
    w, h = 1500, 1000
    data = raw_png(w, h, 16, 2, zlib.compress((b"\x00" + bytes(6 * w)) * h, 9))
    assert w * h * 6 / len(data) > 1000
    (tmp_path / "black.png").write_bytes(data)
    run(png2y4m_binary, "-o", tmp_path / "o.y4m", tmp_path / "black.png")
    for plane, level in zip(read_y4m(tmp_path / "o.y4m").frames[0], (16, 128, 128), strict=True):
        assert np.abs(plane.astype(int) - level).max() <= 1
        assert abs(float(plane.mean()) - level) < 0.01


def test_size_differs_from_first_frame(png2y4m_binary: Path, tmp_path: Path) -> None:
    frames_of(tmp_path, 2, 6, 4)
    write_image(tmp_path / "00000003.png", "rgb", 16, 7, 4, 1, False)
    out = tmp_path / "out.y4m"
    result = run(png2y4m_binary, "-o", out, tmp_path / "%08d.png", check=False)
    assert_one_error_line(result, str(tmp_path / "00000003.png"))
    assert "differs" in result.stderr
    assert len(out.read_bytes()) == len(header(6, 4)) + 2 * frame_bytes(6, 4)


def test_unwritable_output(png2y4m_binary: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", "rgb", 8, 4, 4, 1, False)
    missing_dir = tmp_path / "nope" / "out.y4m"
    assert_one_error_line(
        run(png2y4m_binary, "-o", missing_dir, tmp_path / "a.png", check=False), str(missing_dir)
    )
    if Path("/dev/full").exists():
        result = run(png2y4m_binary, "-d", "-o", "/dev/full", tmp_path / "a.png", check=False)
        assert_one_error_line(result, "/dev/full")
        assert (tmp_path / "a.png").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "x.png"],
        ["--bogus", "-o", "o", "x.png"],
        ["x.png"],
        ["-o"],
        ["-o", "o"],
        ["-o", "o", "a.png", "b.png"],
        ["--threads", "0", "-o", "o", "x.png"],
        ["-f", "abc", "-o", "o", "x"],
    ],
)
def test_bad_options(png2y4m_binary: Path, fresh_cwd: Path, argv: list[str]) -> None:
    result = run(png2y4m_binary, *argv, check=False)
    assert_one_error_line(
        result, "options" if not argv[0].startswith(("-f", "--threads")) else argv[0]
    )
    assert not (fresh_cwd / "o").exists()


def test_help(png2y4m_binary: Path) -> None:
    for flag in ("-h", "--help"):
        result = run(png2y4m_binary, flag)
        assert "usage: png2y4m" in result.stdout and "--chroma-444" in result.stdout


# ------------------------------------------------------------------ the build


def test_default_build_is_static(png2y4m_binary: Path) -> None:
    with png2y4m_binary.open("rb") as f:
        elf = ELFFile(f)
        assert not any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments())
        assert elf.get_section_by_name(".dynamic") is None or all(
            tag.entry.d_tag != "DT_NEEDED"
            for tag in elf.get_section_by_name(".dynamic").iter_tags()
        )


@pytest.mark.parametrize("threads", ["2", "3", "8"])
def test_threads_stop_cleanly_at_a_bad_frame(
    png2y4m_binary: Path, tmp_path: Path, threads: str
) -> None:
    """Frames before a bad one are all written, in order, whichever thread finishes first
    (repeated, since the interleaving changes from run to run)."""
    frames_of(tmp_path, 6, 5, 4)
    good = tmp_path / "good.y4m"
    run(png2y4m_binary, "-o", good, tmp_path / "%08d.png")
    (tmp_path / "00000007.png").write_bytes((tmp_path / "00000001.png").read_bytes()[:-30])
    out = tmp_path / "out.y4m"
    for _ in range(25):
        result = run(
            png2y4m_binary, "--threads", threads, "-o", out, tmp_path / "%08d.png", check=False
        )
        assert_one_error_line(result, str(tmp_path / "00000007.png"))
        assert out.read_bytes() == good.read_bytes()


@pytest.mark.parametrize("chroma", ["420", "422", "444"])
def test_one_process_per_frame_equals_one_run(
    png2y4m_binary: Path, tmp_path: Path, chroma: str
) -> None:
    """How a worker builds a chunk (-i, one PNG at a time) gives the bytes of a single run:
    the dither's frame index is the frame's position in the output."""
    frames_of(tmp_path, 1, 13, 9)
    for i in range(2, 5):  # the same picture four times
        (tmp_path / f"{i:08d}.png").write_bytes((tmp_path / "00000001.png").read_bytes())
    whole = tmp_path / "whole.y4m"
    run(png2y4m_binary, *CHROMA_FLAG[chroma], "-o", whole, tmp_path / "%08d.png")
    pieces = tmp_path / "pieces.y4m"
    for i in range(1, 5):
        run(png2y4m_binary, "-i", *CHROMA_FLAG[chroma], "-o", pieces, tmp_path / f"{i:08d}.png")
    assert pieces.read_bytes() == whole.read_bytes()
    video = read_y4m(whole)
    assert not np.array_equal(video.frames[0][0], video.frames[1][0])  # noise moves
