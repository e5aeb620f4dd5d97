"""png2y4m never crashes: 500 corrupted PNGs (bit flips, truncations, bad chunk lengths,
fixed seed) through the static build and the AddressSanitizer/UBSan build, and one run under
valgrind. Each run must end with a clean exit: an error line and status 1, or success when the
damage was harmless (an ancillary chunk), never a signal or a sanitizer report."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import png
import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261125
COUNT = 500


@pytest.fixture(scope="module")
def asan_binary() -> Path:
    subprocess.run(["make", "-s", "-C", str(ROOT / "function" / "png2y4m"), "asan"], check=True)
    return ROOT / "function" / "png2y4m" / "png2y4m-asan"


def seed_pngs(directory: Path) -> list[bytes]:
    """Small valid PNGs of several kinds, the material the corruptions start from."""
    rng = np.random.default_rng(SEED)
    out = []
    kinds = [
        dict(greyscale=False, bitdepth=16, interlace=False),
        dict(greyscale=False, bitdepth=8, interlace=True),
        dict(greyscale=True, bitdepth=4, interlace=False),
        dict(greyscale=True, alpha=True, bitdepth=16, interlace=True),
        dict(greyscale=False, alpha=True, bitdepth=8, interlace=False),
    ]
    for i, kind in enumerate(kinds):
        w, h = 5 + 3 * i, 4 + 2 * i
        channels = (1 if kind["greyscale"] else 3) + (1 if kind.get("alpha") else 0)
        top = (1 << int(kind["bitdepth"])) - 1
        rows = rng.integers(0, top + 1, (h, w * channels)).tolist()
        path = directory / f"seed{i}.png"
        with path.open("wb") as f:
            png.Writer(w, h, **kind).write(f, rows)  # type: ignore[arg-type]
        out.append(path.read_bytes())
    # A palette image with an ancillary chunk before IDAT.
    path = directory / "seed_pal.png"
    with path.open("wb") as f:
        png.Writer(7, 3, palette=[(i, 255 - i, i // 2) for i in range(16)], bitdepth=4).write(
            f, rng.integers(0, 16, (3, 7)).tolist()
        )
    data = path.read_bytes()
    text = b"tEXt" + b"Comment\x00fuzz"
    chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text))
    out.append(data[:33] + chunk + data[33:])
    return out


def chunk_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 8
    while pos + 8 <= len(data):
        offsets.append(pos)
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        pos += 12 + length
    return offsets


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """One damaged copy of ``data``: bit flips, a truncation, or a bad chunk length."""
    buf = bytearray(data)
    how = rng.randrange(5)
    if how == 0:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif how == 1:
        del buf[rng.randrange(len(buf)) :]
    elif how == 2:
        at = rng.choice(chunk_offsets(data))
        value = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 16)])
        buf[at : at + 4] = struct.pack(">I", value)
    elif how == 3:
        # Re-checksummed damage inside a chunk, so it reaches the decoder, not the CRC check.
        at = rng.choice(chunk_offsets(data))
        length = struct.unpack(">I", data[at : at + 4])[0]
        if length:
            i = at + 8 + rng.randrange(length)
            buf[i] = rng.randrange(256)
            crc = zlib.crc32(bytes(buf[at + 4 : at + 8 + length]))
            buf[at + 8 + length : at + 12 + length] = struct.pack(">I", crc)
    else:
        # Splice: drop or duplicate a whole chunk.
        offsets = chunk_offsets(data)
        at = rng.choice(offsets)
        length = struct.unpack(">I", data[at : at + 4])[0]
        piece = bytes(buf[at : at + 12 + length])
        if rng.random() < 0.5:
            del buf[at : at + 12 + length]
        else:
            buf[at:at] = piece
    return bytes(buf)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    directory = tmp_path_factory.mktemp("fuzz")
    seeds = seed_pngs(directory)
    rng = random.Random(SEED)
    paths = []
    for i in range(COUNT):
        path = directory / f"c{i:04d}.png"
        path.write_bytes(corrupt(seeds[i % len(seeds)], rng))
        paths.append(path)
    yield paths
    shutil.rmtree(directory, ignore_errors=True)


def convert(binary: Path, path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = path.with_suffix(f".{binary.name}.y4m")
    env = dict(
        os.environ,
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=86",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87",
    )
    result = subprocess.run(
        [str(binary), "-o", str(out), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return path, result


def check_all(binary: Path, paths: list[Path]) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda p: convert(binary, p), paths))
    ok = 0
    for path, result in results:
        assert result.returncode in (0, 1), (path.name, result.returncode, result.stderr[-2000:])
        assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, (
            path.name,
            result.stderr[-2000:],
        )
        if result.returncode:
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("png2y4m: "), (path.name, result.stderr)
        else:
            ok += 1
            assert result.stderr == ""
    # Most corruptions are caught, a few (ancillary data) are harmless.
    assert ok < len(paths) // 2


def test_corrupt_pngs_static(png2y4m_binary: Path, corpus: list[Path]) -> None:
    check_all(png2y4m_binary, corpus)


def test_corrupt_pngs_sanitized(asan_binary: Path, corpus: list[Path]) -> None:
    check_all(asan_binary, corpus)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_valgrind_clean(png2y4m_binary: Path, corpus: list[Path], tmp_path: Path) -> None:
    build = ROOT / "function" / "png2y4m"
    subprocess.run(["make", "-s", "-C", str(build), "png2y4m-debug"], check=True)
    seeds = seed_pngs(tmp_path)
    for i, data in enumerate([seeds[0], seeds[1], *[p.read_bytes() for p in corpus[:2]]]):
        (tmp_path / f"{i + 1:08d}.png").write_bytes(data)
    for target in (tmp_path / "00000001.png", tmp_path / "%08d.png"):
        result = subprocess.run(
            [
                "valgrind",
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
                "-q",
                str(build / "png2y4m-debug"),
                "--threads",
                "2",
                "-o",
                str(tmp_path / "v.y4m"),
                str(target),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode in (0, 1), result.stderr


def test_sanitized_huge_header_claims(asan_binary: Path, tmp_path: Path) -> None:
    """Headers claiming 65536x65536 pixels in a few bytes: an error line, no allocation (the
    ASan allocator would report a gigantic request)."""
    paths = []
    for depth, colour, interlace in ((16, 2, 0), (8, 6, 1), (1, 0, 0)):
        ihdr = b"IHDR" + struct.pack(">IIBBBBB", 65536, 65536, depth, colour, 0, 0, interlace)
        idat = b"IDAT" + zlib.compress(bytes(500))
        data = b"\x89PNG\r\n\x1a\n" + b"".join(
            struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c))
            for c in (ihdr, idat, b"IEND")
        )
        path = tmp_path / f"huge{depth}_{colour}.png"
        path.write_bytes(data)
        paths.append(path)
    for path in paths:
        _, result = convert(asan_binary, path)
        assert result.returncode == 1, result.stderr[-2000:]
        assert "too short for the image size" in result.stderr


def test_sanitized_threads_and_incremental(asan_binary: Path, tmp_path: Path) -> None:
    """The frame pipeline and the row split under ASan/UBSan, valid and damaged frames."""
    seeds = seed_pngs(tmp_path)
    for i in range(6):
        (tmp_path / f"{i + 1:08d}.png").write_bytes(seeds[0])
    (tmp_path / "00000007.png").write_bytes(seeds[0][:-30])
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="halt_on_error=1")
    runs = [
        (["--threads", "3", "-o", str(tmp_path / "a.y4m"), str(tmp_path / "%08d.png")], 1),
        (["--threads", "4", "-o", str(tmp_path / "b.y4m"), str(tmp_path / "00000001.png")], 0),
        (
            ["-i", "--threads", "2", "-o", str(tmp_path / "b.y4m"), str(tmp_path / "00000002.png")],
            0,
        ),
    ]
    for argv, code in runs:
        result = subprocess.run(
            [str(asan_binary), *argv], capture_output=True, text=True, timeout=60, env=env
        )
        assert result.returncode == code, result.stderr
        assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr
    assert (tmp_path / "a.y4m").read_bytes().count(b"FRAME") == 6
    assert (tmp_path / "b.y4m").read_bytes().count(b"FRAME") == 2
