"""vpxenc never crashes on damaged Y4M: 300 corrupted streams (bit flips, truncations, header
tokens swapped for hostile ones, damaged frame headers, inserted bytes; fixed seed) through
the static build and the AddressSanitizer/UBSan build, VP9 and VP8 in turn. Each run must end
with a clean exit: one error line and status 1, or success when the damage was harmless (a
flipped sample), never a signal or a sanitizer report."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261202
COUNT = 300

# Tokens a hostile or broken writer might put in a Y4M header.
HOSTILE_TOKENS = [
    "W0", "W-1", "W4294967296", "W", "Wabc", "W65535", "H65535", "H99999", "W17 H9", "W7680",
    "F1:0", "F0:0", "F:", "F1:", "F99999999999:1", "F2147483647:1", "F1:2147483647",
    "C444", "C420p10", "C420p", "C422", "Cmono", "C", "C420", "C420mpeg2", "It", "I?", "I",
    "A0:0", "A:", "X", "XYSCSS=420P10", "", "  ", "\t", "YUV4MPEG2",
]  # fmt: skip

FRAME_HEADERS = [b"FRAME Ixyz\n", b"FRAM\n", b"FRAME" + b"x" * 2000 + b"\n", b"FRAME", b"\n"]


def seed_y4m(w: int, h: int, frames: int, tags: str, seed: int) -> bytes:
    rng = random.Random(seed)
    size = w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)
    out = [f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 {tags}\n".encode()]
    for _ in range(frames):
        out.append(b"FRAME\n" + bytes(rng.randrange(256) for _ in range(size)))
    return b"".join(out)


SEEDS = [
    seed_y4m(16, 16, 3, "C420jpeg", 1),
    seed_y4m(17, 9, 2, "C420 XYSCSS=420JPEG", 2),
    seed_y4m(2, 2, 4, "C420mpeg2", 3),
]


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """One damaged copy of ``data``."""
    buf = bytearray(data)
    header_end = data.index(b"\n")
    how = rng.randrange(6)
    if how == 0:  # bit flips, mostly in the header
        for _ in range(rng.randint(1, 4)):
            top = header_end + 1 if rng.random() < 0.7 else len(buf)
            i = rng.randrange(top)
            buf[i] ^= 1 << rng.randrange(8)
    elif how == 1:  # truncation
        del buf[rng.randrange(len(buf)) :]
    elif how == 2:  # a header token replaced by a hostile one
        words = data[:header_end].decode().split(" ")
        words[rng.randrange(1, len(words))] = rng.choice(HOSTILE_TOKENS)
        buf[:header_end] = " ".join(words).encode()
    elif how == 3:  # a hostile token added
        buf[header_end:header_end] = b" " + rng.choice(HOSTILE_TOKENS).encode()
    elif how == 4:  # a damaged frame header
        starts = [i for i in range(len(data)) if data.startswith(b"FRAME\n", i)]
        at = rng.choice(starts)
        buf[at : at + 6] = rng.choice(FRAME_HEADERS)
    else:  # random bytes inserted
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    return bytes(buf)


@pytest.fixture(scope="module")
def asan_binary() -> Path:
    subprocess.run(["make", "-s", "-C", str(ROOT / "function" / "vpxenc"), "asan"], check=True)
    return ROOT / "function" / "vpxenc" / "vpxenc-asan"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    directory = tmp_path_factory.mktemp("vpxfuzz")
    rng = random.Random(SEED)
    paths = []
    for i in range(COUNT):
        path = directory / f"c{i:04d}.y4m"
        path.write_bytes(corrupt(SEEDS[i % len(SEEDS)], rng))
        paths.append(path)
    yield paths
    shutil.rmtree(directory, ignore_errors=True)


def encode(binary: Path, index: int, path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = path.with_suffix(f".{binary.name}.ivf")
    env = dict(
        os.environ,
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=86",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87",
    )
    codec = ("vp9", "vp8")[index % 2]
    result = subprocess.run(
        [str(binary), "--codec", codec, "--rt", "--cpu-used", "8", "-o", str(out), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return path, result


def check_all(binary: Path, paths: list[Path]) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda ip: encode(binary, *ip), enumerate(paths)))
    ok = 0
    for path, result in results:
        assert result.returncode in (0, 1), (path.name, result.returncode, result.stderr[-2000:])
        assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, (
            path.name,
            result.stderr[-2000:],
        )
        out = path.with_suffix(f".{binary.name}.ivf")
        if result.returncode:
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("vpxenc: "), (path.name, result.stderr)
            assert not out.exists(), path.name
        else:
            ok += 1
            assert result.stderr == ""
            assert out.read_bytes()[:4] == b"DKIF"
    # Damage to samples is harmless, most other damage is caught.
    assert 0 < ok < len(paths) * 3 // 4


def test_corrupt_y4m_static(vpxenc_binary: Path, corpus: list[Path]) -> None:
    check_all(vpxenc_binary, corpus)


def test_corrupt_y4m_sanitized(asan_binary: Path, corpus: list[Path]) -> None:
    check_all(asan_binary, corpus)
