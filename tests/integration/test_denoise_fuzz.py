"""denoise never crashes on damaged Y4M: 300 runs on corrupted streams (the corruptions of the
vpxenc fuzz test: bit flips, truncations, hostile header tokens, damaged frame headers,
inserted bytes; fixed seed) as IN, PREV or NEXT, beside mismatched neighbours and --head/--tail
cuts, through the static build and the AddressSanitizer/UBSan build. Each run must end
cleanly: one error line, status 1 and no output file, or success with a readable Y4M of the
input's frame count, never a signal or a sanitizer report."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from mu.y4m import Video, read_y4m, write_y4m
from tests.integration.test_vpxenc_fuzz import corrupt
from tests.unit.test_denoise_reference import make_frames

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "function" / "denoise"
SEED = 20261203
COUNT = 300
SANITIZERS = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
}


@pytest.fixture(scope="module")
def static_binary() -> Path:
    subprocess.run(["make", "-s", "-C", str(BUILD)], check=True)
    return BUILD / "denoise"


@pytest.fixture(scope="module")
def asan_binary() -> Path:
    subprocess.run(["make", "-s", "-C", str(BUILD), "asan"], check=True)
    return BUILD / "denoise-asan"


def seed_videos(directory: Path) -> list[Path]:
    """Valid chunks of several shapes and chroma formats (three of them one geometry, so
    they can stand as each other's neighbours)."""
    shapes = [(6, 4, "420", 4), (6, 4, "420", 3), (6, 4, "420", 1), (5, 3, "422", 3)]
    shapes += [(3, 5, "444", 2), (1, 1, "420", 5), (6, 4, "444", 3)]
    paths = []
    for i, (w, h, chroma, frames) in enumerate(shapes):
        video = Video(w, h, (25, 1), (1, 1), chroma, make_frames(frames, w, h, chroma, i))
        path = directory / f"seed{i}.y4m"
        write_y4m(path, video)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Case:
    argv: list[str]  # the arguments before "-o OUT IN"
    input: Path
    filter: bool  # a filter run (the output has the input's frame count)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Case]]:
    directory = tmp_path_factory.mktemp("denoise-fuzz")
    seeds = seed_videos(directory)
    rng = random.Random(SEED)
    out = []
    for i in range(COUNT):
        # The damaged file as IN, PREV or NEXT, the others valid, now and then mismatched.
        role = rng.choice(["in", "in", "prev", "next", "head", "tail"])
        damaged = directory / f"c{i:04d}.y4m"
        source = rng.choice(seeds if role in ("in", "head", "tail") else seeds[:3])
        damaged.write_bytes(corrupt(source.read_bytes(), rng))
        if role in ("head", "tail"):
            out.append(Case([f"--{role}", str(rng.randrange(0, 6))], damaged, False))
            continue
        argv = ["-r", str(rng.randrange(0, 5))]
        chunk = damaged if role == "in" else rng.choice(seeds[:3])
        for flag, name in (("-p", "prev"), ("-n", "next")):
            if role == name:
                argv += [flag, str(damaged)]
            elif rng.random() < 0.6:
                argv += [flag, str(rng.choice(seeds[:3] if rng.random() < 0.9 else seeds))]
        out.append(Case(argv, chunk, True))
    yield out
    shutil.rmtree(directory, ignore_errors=True)


def run(binary: Path, case: Case, index: int, directory: Path) -> tuple[Case, Path, str, int]:
    out = directory / f"out{index:04d}-{binary.name}.y4m"
    result = subprocess.run(
        [str(binary), *case.argv, "-o", str(out), str(case.input)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **SANITIZERS),
    )
    return case, out, result.stderr, result.returncode


def check_all(binary: Path, cases: list[Case], directory: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda ic: run(binary, ic[1], ic[0], directory), enumerate(cases)))
    failed = 0
    for case, out, stderr, code in results:
        what = (case.argv, case.input.name, stderr[-2000:])
        assert code in (0, 1), what
        assert "Sanitizer" not in stderr and "runtime error" not in stderr, what
        if code:
            failed += 1
            lines = stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("denoise: "), what
            assert not out.exists(), what
        else:
            assert stderr == "", what
            frames = read_y4m(out).frames
            if case.filter:
                assert len(frames) == len(read_y4m(case.input).frames), what
    assert not list(directory.glob("*.tmp*"))
    # Most corruptions are caught; a flipped sample or a harmless extension token is not.
    assert 0 < failed < len(cases)


def test_corrupt_y4m_static(static_binary: Path, cases: list[Case], tmp_path: Path) -> None:
    check_all(static_binary, cases, tmp_path)


def test_corrupt_y4m_sanitized(asan_binary: Path, cases: list[Case], tmp_path: Path) -> None:
    check_all(asan_binary, cases, tmp_path)


def test_sanitized_valid_runs(asan_binary: Path, tmp_path: Path) -> None:
    """The window's buffer sharing under ASan/UBSan: every radius, with and without
    neighbours, chunks shorter than the radius, cuts of every length."""
    seeds = seed_videos(tmp_path)
    env = dict(os.environ, **SANITIZERS)
    for r in range(5):
        for argv in ([], ["-p", str(seeds[0])], ["-n", str(seeds[0])]):
            for chunk in seeds[:3]:
                result = subprocess.run(
                    [
                        str(asan_binary),
                        "-r",
                        str(r),
                        *argv,
                        "-o",
                        str(tmp_path / "o.y4m"),
                        str(chunk),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=env,
                )
                assert result.returncode == 0, result.stderr
    for option in ("--head", "--tail"):
        for count in range(5):
            result = subprocess.run(
                [
                    str(asan_binary),
                    option,
                    str(count),
                    "-o",
                    str(tmp_path / "c.y4m"),
                    str(seeds[0]),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert result.returncode == 0, result.stderr
            assert len(read_y4m(tmp_path / "c.y4m").frames) == count


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_valgrind_clean(cases: list[Case], tmp_path: Path) -> None:
    """The plain -O2 build (no sanitizer) under valgrind: a filter with both neighbours, a
    tail cut, and the first damaged inputs of the corpus."""
    subprocess.run(["make", "-s", "-C", str(BUILD), "denoise-debug"], check=True)
    seeds = seed_videos(tmp_path)
    a, p, n = (str(s) for s in seeds[:3])
    runs = [
        ["-r", "2", "-p", p, "-n", n, "-o", str(tmp_path / "a.y4m"), a],
        ["--tail", "2", "-o", str(tmp_path / "b.y4m"), str(seeds[0])],
        *([*c.argv, "-o", str(tmp_path / "c.y4m"), str(c.input)] for c in cases[:4]),
    ]
    valgrind = ["valgrind", "--error-exitcode=99", "--leak-check=full"]
    valgrind += ["--errors-for-leak-kinds=definite", "-q", str(BUILD / "denoise-debug")]
    for argv in runs:
        result = subprocess.run(
            [*valgrind, *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode in (0, 1), (argv, result.stderr)
