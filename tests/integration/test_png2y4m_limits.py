"""png2y4m bounds what it allocates by what it will decode, and never writes over its input.

The real static binary as a subprocess. The giant images are 1-bit PNGs made here: a few
tens of kilobytes on disk, billions of bytes once decoded to 16-bit RGB. They run under an
address-space limit (``ulimit -v`` in the shell that execs the binary) far below what they
would decode to, so a refusal proves the binary never asked for that memory. (Peak RSS is
not measured: ``ru_maxrss`` of a child keeps the parent's high-water mark across ``exec``.)
"""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.integration.test_png2y4m import (
    assert_one_error_line,
    frames_of,
    raw_png,
    run,
    write_image,
)

EIGHT_K = 7680 * 4320
MEMORY_LIMIT_KB = 64 * 1024
"""``ulimit -v`` for the giant images: 1/45 of what the 20000x20000 one used to take."""


def one_bit_png(side: int) -> bytes:
    """A flat black 1-bit greyscale PNG of ``side`` x ``side`` (deflate at its best)."""
    packer = zlib.compressobj(9)
    row = b"\0" + bytes((side + 7) // 8)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return raw_png(side, side, 1, 0, pixels)


def run_limited(binary: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the binary with at most :data:`MEMORY_LIMIT_KB` of address space."""
    return subprocess.run(
        ["sh", "-c", f'ulimit -v {MEMORY_LIMIT_KB} && exec "$@"', "sh", str(binary),
         *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("side", [20000, 40000])
def test_a_tiny_one_bit_giant_is_refused_before_allocating(
    png2y4m_binary: Path, tmp_path: Path, side: int
) -> None:
    data = one_bit_png(side)
    assert len(data) < 200_000  # 48.7 KB for 20000x20000
    big = tmp_path / "big.png"
    big.write_bytes(data)
    out = tmp_path / "o.y4m"
    result = run_limited(png2y4m_binary, "-o", out, big)
    assert_one_error_line(result, str(big))
    pixels = side * side
    assert (
        f"image is {side}x{side} = {pixels} pixels ({pixels * 6 // 1000000} MB decoded), "
        f"above the limit of {EIGHT_K} pixels (--max-pixels;"
    ) in result.stderr, result.stderr
    assert not out.exists()


def test_the_default_limit_is_8k(png2y4m_binary: Path, tmp_path: Path) -> None:
    """7680x4320 passes the check, one pixel more does not (1-bit: decoded only if allowed)."""
    wide = tmp_path / "wide.png"
    for w, h in ((7681, 4320), (7680, 4321)):
        body = zlib.compress((b"\0" + bytes((w + 7) // 8)) * h, 9)
        wide.write_bytes(raw_png(w, h, 1, 0, body))
        result = run_limited(png2y4m_binary, "-o", tmp_path / "o.y4m", wide)
        assert_one_error_line(result, str(wide))
        assert f"image is {w}x{h} = {w * h} pixels" in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["rgb", "gray"])
def test_max_pixels_is_exact(png2y4m_binary: Path, tmp_path: Path, kind: str) -> None:
    """Both decoders (8-bit RGB: the fast path; 1-bit grey: libpng) refuse above N only."""
    image = tmp_path / "img.png"
    write_image(image, kind, 8 if kind == "rgb" else 1, 40, 25, 3, False)
    out = tmp_path / "o.y4m"
    refused = run(png2y4m_binary, "--max-pixels", "999", "-o", out, image, check=False)
    assert_one_error_line(refused, str(image))
    assert "image is 40x25 = 1000 pixels (0 MB decoded), above the limit of 999" in (
        refused.stderr
    )
    assert not out.exists()
    run(png2y4m_binary, "--max-pixels", "1000", "-o", out, image)
    assert out.read_bytes().startswith(b"YUV4MPEG2 W40 H25 ")


@pytest.mark.parametrize("value", ["0", "-5", "abc", "", "1e9", "99999999999999999999999"])
def test_bad_max_pixels(png2y4m_binary: Path, fresh_cwd: Path, value: str) -> None:
    result = run(png2y4m_binary, "--max-pixels", value, "-o", "o", "x.png", check=False)
    assert_one_error_line(result, "--max-pixels")
    assert f"'{value}' is not an integer >= 1" in result.stderr
    assert not (fresh_cwd / "o").exists()


def test_help_documents_the_limits(png2y4m_binary: Path) -> None:
    text = run(png2y4m_binary, "--help").stdout
    assert "--max-pixels N" in text and "33177600" in text and "7680x4320" in text
    assert "-o naming the input file" in text


# ------------------------------------------------------------------ -o naming an input


def test_output_naming_the_input_file_is_refused(png2y4m_binary: Path, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    write_image(image, "rgb", 8, 8, 8, 1, False)
    original = image.read_bytes()
    (tmp_path / "alias.png").symlink_to(image)
    os.link(image, tmp_path / "hard.png")
    for output in (image, tmp_path / "alias.png", tmp_path / "hard.png", tmp_path / "." / "a.png"):
        for extra in ([], ["-i"], ["-d"]):
            result = run(png2y4m_binary, *extra, "-o", output, image, check=False)
            assert_one_error_line(result, str(output))
            assert "-o names the input file" in result.stderr
            assert image.read_bytes() == original


def test_output_matching_the_input_pattern_is_refused(
    png2y4m_binary: Path, tmp_path: Path
) -> None:
    frames_of(tmp_path, 3, 6, 4)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    pattern = tmp_path / "%08d.png"
    for name in ("00000002.png", "00000009.png"):  # an existing frame, and the next ones
        output = tmp_path / name
        result = run(png2y4m_binary, "-d", "-o", output, pattern, check=False)
        assert_one_error_line(result, str(output))
        assert f"-o names a file the input pattern {pattern} matches" in result.stderr
    os.link(tmp_path / "00000003.png", tmp_path / "frame3.y4m")
    result = run(png2y4m_binary, "-d", "-o", tmp_path / "frame3.y4m", pattern, check=False)
    assert_one_error_line(result, str(tmp_path / "frame3.y4m"))
    assert f"-o names input frame {tmp_path / '00000003.png'}" in result.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "frame3.y4m"}
    assert after == before  # nothing deleted, nothing written
    # A Y4M beside the frames is what the png2y4m job writes: still fine.
    run(png2y4m_binary, "-o", tmp_path / "00000000.y4m", pattern)
