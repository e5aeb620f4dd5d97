"""The static denoise binary against the reference of mu.denoise, byte for byte: random small
videos of every chroma format, radius 0..4, with and without the neighbouring frames; --head
and --tail cut exactly; bad input ends in one line on stderr, status 1 and no output file."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mu.denoise import MAX_RADIUS, filter_frames
from mu.y4m import Video, read_y4m, write_y4m
from tests.unit.test_denoise_reference import make_frames, videos

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def denoise_binary() -> Path:
    """The static denoise binary, built (incrementally) from function/denoise."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "function" / "denoise")], check=True)
    binary = ROOT / "function" / "denoise" / "denoise"
    assert binary.is_file(), f"build did not produce {binary}"
    return binary


def run(binary: Path, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *map(str, argv)], capture_output=True, text=True, timeout=60
    )


def neighbour(video: Video, count: int, seed: int) -> Video:
    frames = make_frames(count, video.width, video.height, video.chroma, seed)
    return Video(video.width, video.height, video.fps, video.aspect, video.chroma, frames)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    video=videos(),
    r=st.integers(0, MAX_RADIUS),
    prev_extra=st.none() | st.integers(0, 3),
    next_extra=st.none() | st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_binary_equals_reference(
    denoise_binary: Path,
    video: Video,
    r: int,
    prev_extra: int | None,
    next_extra: int | None,
    seed: int,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_y4m(d / "in.y4m", video)
        argv: list[str | Path] = ["-r", str(r), "-o", d / "out.y4m"]
        prev = nxt = None
        if prev_extra is not None:
            prev = neighbour(video, r + prev_extra, seed)
            write_y4m(d / "prev.y4m", prev)
            argv += ["-p", d / "prev.y4m"]
        if next_extra is not None:
            nxt = neighbour(video, r + next_extra, seed + 1)
            write_y4m(d / "next.y4m", nxt)
            argv += ["-n", d / "next.y4m"]
        result = run(denoise_binary, *argv, d / "in.y4m")
        assert result.returncode == 0 and result.stderr == "", result.stderr
        expected = Video(
            video.width,
            video.height,
            video.fps,
            video.aspect,
            video.chroma,
            filter_frames(
                video.frames, r, prev.frames if prev else None, nxt.frames if nxt else None
            ),
        )
        write_y4m(d / "ref.y4m", expected)
        assert (d / "out.y4m").read_bytes() == (d / "ref.y4m").read_bytes()
        assert sorted(p.name for p in d.iterdir()) == sorted(
            ["in.y4m", "out.y4m", "ref.y4m"]
            + (["prev.y4m"] if prev else [])
            + (["next.y4m"] if nxt else [])
        )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(video=videos(), head=st.booleans(), data=st.data())
def test_head_and_tail_cut_exactly(
    denoise_binary: Path, video: Video, head: bool, data: st.DataObject
) -> None:
    n = len(video.frames)
    count = data.draw(st.integers(0, n + 2), label="count")
    option = "--head" if head else "--tail"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_y4m(d / "in.y4m", video)
        result = run(denoise_binary, option, str(count), "-o", d / "out.y4m", d / "in.y4m")
        if count > n:
            assert result.returncode == 1
            assert result.stderr == (
                f"denoise: {d / 'in.y4m'}: holds {n} frames, fewer than the {count} of {option}\n"
            )
            assert not (d / "out.y4m").exists()
            return
        assert result.returncode == 0, result.stderr
        kept = video.frames[:count] if head else video.frames[n - count :]
        cut = Video(video.width, video.height, video.fps, video.aspect, video.chroma, kept)
        write_y4m(d / "ref.y4m", cut)
        assert (d / "out.y4m").read_bytes() == (d / "ref.y4m").read_bytes()


def test_plain_c420_header_and_frame_parameters(denoise_binary: Path, tmp_path: Path) -> None:
    """A 'C420' header is kept as written; FRAME parameters are read and not written."""
    frames = make_frames(3, 5, 3, "420", 7)
    body = b"".join(b"FRAME Ixyz\n" + b"".join(p.tobytes() for p in f) for f in frames)
    header = b"YUV4MPEG2 W5 H3 F30000:1001 It A0:0 C420 XYSCSS=420JPEG\n"
    (tmp_path / "in.y4m").write_bytes(header + body)
    result = run(denoise_binary, "-r", "1", "-o", tmp_path / "out.y4m", tmp_path / "in.y4m")
    assert result.returncode == 0, result.stderr
    out = (tmp_path / "out.y4m").read_bytes()
    assert out.startswith(header) and out.count(b"FRAME\n") == 3
    got = read_y4m(tmp_path / "out.y4m").frames
    for a, b in zip(got, filter_frames(frames, 1), strict=True):
        for pa, pb in zip(a, b, strict=True):
            assert pa.tobytes() == pb.tobytes()


def test_stats_line(denoise_binary: Path, tmp_path: Path) -> None:
    src = small(tmp_path, "in.y4m", frames=3)
    result = run(denoise_binary, "--stats", "-r", "2", "-o", tmp_path / "out.y4m", src)
    assert result.returncode == 0 and result.stderr == ""
    stats = json.loads(result.stdout)
    assert (stats["frames"], stats["frame_bytes"]) == (3, 4 * 3 + 2 * 2 * 2)
    assert 0 <= stats["filter_ns"] <= stats["total_ns"]
    assert result.stdout.count("\n") == 1


def test_help(denoise_binary: Path) -> None:
    result = run(denoise_binary, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: denoise -r R -o OUT")


def small(tmp: Path, name: str, chroma: str = "420", frames: int = 2, w: int = 4) -> Path:
    video = Video(w, 3, (25, 1), (0, 0), chroma, make_frames(frames, w, 3, chroma, frames))
    write_y4m(tmp / name, video)
    return tmp / name


HEADER = b"YUV4MPEG2 W4 H3 F25:1 Ip A0:0 C420jpeg\n"
FRAME_BYTES = 4 * 3 + 2 * 2 * 2

# (name, bytes of IN, the expected error after "denoise: IN: ")
BAD_INPUTS = [
    ("empty", b"", "empty file (no Y4M header)"),
    ("not y4m", b"P6\n4 3\n255\n", "not a Y4M file (it does not start with 'YUV4MPEG2 ')"),
    ("truncated header", HEADER[:20], "truncated Y4M header (the file ends inside it)"),
    ("no width", b"YUV4MPEG2 H3 F25:1\n", "the Y4M header gives no width (W) or height (H)"),
    ("zero width", b"YUV4MPEG2 W0 H3\n", "bad width 'W0' in the Y4M header (1..65535)"),
    ("bad rate", HEADER.replace(b"F25:1", b"F25"), "bad frame rate 'F25' in the Y4M header"),
    ("10 bit", HEADER.replace(b"C420jpeg", b"C420p10"), "chroma 'C420p10' is not supported"),
    ("mono", HEADER.replace(b"C420jpeg", b"Cmono"), "chroma 'Cmono' is not supported"),
    (
        "control byte",
        HEADER.replace(b"Ip", b"I\x01"),
        "the Y4M header holds a non-printable byte (0x01) at offset 23",
    ),
    (
        "huge claim",
        b"YUV4MPEG2 W7680 H4320 C444\nFRAME\n" + bytes(100),
        "frame 0 is truncated: the file holds 106 bytes after the header",
    ),
    (
        "too large",
        b"YUV4MPEG2 W65535 H65535\n",
        "frame of 65535x65535 is more than 33177600 pixels (8K UHD)",
    ),
    (
        "truncated frame",
        HEADER + (b"FRAME\n" + bytes(FRAME_BYTES)) * 2 + b"FRAME\n" + bytes(5),
        "frame 2 is truncated: 5 of its 20 bytes",
    ),
    (
        "bad frame marker",
        HEADER + b"FRAME\n" + bytes(FRAME_BYTES) + b"FRAMX\n" + bytes(FRAME_BYTES),
        "frame 1 does not start with 'FRAME'",
    ),
    (
        "trailing bytes",
        HEADER + b"FRAME\n" + bytes(FRAME_BYTES) + b"\x00\x00",
        "truncated frame header after 1 frames",
    ),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input(
    denoise_binary: Path, tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    (tmp_path / "in.y4m").write_bytes(data)
    for argv in (["-r", "2"], ["--tail", "1"]):
        result = run(denoise_binary, *argv, "-o", tmp_path / "out.y4m", tmp_path / "in.y4m")
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"denoise: {tmp_path / 'in.y4m'}: {message}"), result.stderr
        assert result.stderr.count("\n") == 1 and result.stdout == ""
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.y4m"]


def test_bad_neighbours_and_arguments(denoise_binary: Path, tmp_path: Path) -> None:
    src = small(tmp_path, "in.y4m")
    out = tmp_path / "out.y4m"
    cases: list[tuple[list[str | Path], str]] = [
        (
            ["-r", "2", "-p", small(tmp_path, "p1.y4m", frames=1)],
            f"{tmp_path / 'p1.y4m'}: holds 1 frames, the filter needs the 2 before {src} (-r 2)",
        ),
        (
            ["-r", "3", "-n", small(tmp_path, "n2.y4m", frames=2)],
            f"{tmp_path / 'n2.y4m'}: holds 2 frames, the filter needs the 3 after {src} (-r 3)",
        ),
        (
            ["-r", "1", "-n", small(tmp_path, "n444.y4m", chroma="444")],
            f"{tmp_path / 'n444.y4m'}: header mismatch: 4x3 4:4:4, but {src} is 4x3 4:2:0",
        ),
        (
            ["-r", "1", "-p", small(tmp_path, "p6.y4m", w=6)],
            f"{tmp_path / 'p6.y4m'}: header mismatch: 6x3 4:2:0, but {src} is 4x3 4:2:0",
        ),
        (
            ["-r", "1", "-n", small(tmp_path, "n0.y4m", frames=0)],
            f"{tmp_path / 'n0.y4m'}: holds 0 frames, the filter needs the 1 after {src} (-r 1)",
        ),
        (["-r", "5"], "-r: '5' is not an integer in 0..4"),
        (["-r", "-1"], "-r: '-1' is not an integer in 0..4"),
        (["-r", "x"], "-r: 'x' is not an integer in 0..4"),
        ([], f"{src}: no radius: give -r R (0..4)"),
        (["--head", "1", "-r", "1"], "--head: cuts frames; -r, -p, -n and --stats filter"),
        (["--head", "1", "--tail", "1"], "--tail: give --head or --tail, not both"),
        (["--bogus"], "--bogus: unknown option (see --help)"),
        (["-r", "1", "-p", tmp_path / "missing.y4m"], f"{tmp_path / 'missing.y4m'}: cannot open"),
    ]
    for argv, message in cases:
        result = run(denoise_binary, *argv, "-o", out, src)
        assert result.returncode == 1, (argv, result.stderr)
        assert result.stderr.startswith(f"denoise: {message}"), (argv, result.stderr)
        assert result.stderr.count("\n") == 1
        assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    for argv, message in [
        (["-r", "1", src], f"{src}: no output file: give -o OUT"),
        (["-r", "1", "-o", out], "usage: give one input Y4M file"),
        (["-r", "1", "-o", src, src], f"{src}: -o names an input file ({src})"),
    ]:
        result = run(denoise_binary, *argv)
        assert result.returncode == 1 and result.stderr.startswith(f"denoise: {message}"), (
            result.stderr
        )
    assert src.read_bytes() == small(tmp_path, "again.y4m").read_bytes()


def test_empty_chunk(denoise_binary: Path, tmp_path: Path) -> None:
    """A chunk of no frames gives a header alone, but its neighbours are checked all the same
    (as the reference does)."""
    empty = small(tmp_path, "empty.y4m", frames=0)
    out = tmp_path / "out.y4m"
    result = run(denoise_binary, "-r", "2", "-o", out, empty)
    assert result.returncode == 0 and out.read_bytes() == empty.read_bytes()
    out.unlink()
    n1 = small(tmp_path, "n1.y4m", frames=1)
    result = run(
        denoise_binary, "-r", "2", "-p", small(tmp_path, "p2.y4m"), "-n", n1, "-o", out, empty
    )
    assert result.returncode == 1 and not out.exists()
    assert (
        result.stderr
        == f"denoise: {n1}: holds 1 frames, the filter needs the 2 after {empty} (-r 2)\n"
    )


def test_docs_block_runs_from_the_checkout(
    denoise_binary: Path, png2y4m_binary: Path, tmp_path: Path
) -> None:
    """docs/denoise.md's commands, run as a user runs them in the checkout (a directory with
    the checkout's function/ and .venv, so nothing is written into the real one): three
    chunks filtered with their neighbours' frames are the clip filtered in one piece."""
    text = (ROOT / "docs" / "denoise.md").read_text()
    blocks = re.findall(r"^```sh[ \t]*\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 1
    for name in ("function", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {
        "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", blocks[0]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    clip = read_y4m(tmp_path / "clip.y4m")
    whole = read_y4m(tmp_path / "clip-tf2.y4m")
    assert len(whole.frames) == 12
    expected = filter_frames(clip.frames, 2)
    for got, want in zip(whole.frames, expected, strict=True):
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, want, strict=True))
