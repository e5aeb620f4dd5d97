"""The real static vpxenc binary, checked by decoders we did not write.

Frames are generated (mu.frames), written as PNGs with Pillow and turned into Y4M by the real
png2y4m. Each IVF our encoder writes is decoded by Debian's ``vpxdec`` (the referee): the
frame count and size must match the source and the PSNR of the decoded frames against the
source must be above a floor stated for the settings used. Our output must also be the very
bytes Debian's ``vpxenc`` writes for the same input and settings (same libvpx, one pass), and
the same bytes run after run. Every bad input or option ends with status 1 and one line
naming the problem, and leaves the output file as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile
from PIL import Image

from mu.frames import make_frame
from mu.lambdaize import build_bundle, inspect_executable
from mu.y4m import Video, psnr, read_y4m
from tests.integration.test_emulator import wait_for

VPXDEC = shutil.which("vpxdec")
DEBIAN_VPXENC = Path("/usr/bin/vpxenc")
needs_vpxdec = pytest.mark.skipif(VPXDEC is None, reason="vpxdec (vpx-tools) is not installed")

FRAMES = 12
SIZE = (96, 64)


@dataclass(frozen=True)
class Ivf:
    """An IVF file as read back: its header fields and its frames."""

    fourcc: bytes
    width: int
    height: int
    rate: int
    scale: int
    count: int
    frames: list[tuple[int, bytes]]  # (pts, payload)


def read_ivf(path: Path) -> Ivf:
    data = path.read_bytes()
    assert data[:4] == b"DKIF" and struct.unpack_from("<HH", data, 4) == (0, 32), data[:8]
    fourcc = data[8:12]
    width, height, rate, scale, count = struct.unpack_from("<HHIII", data, 12)
    frames, pos = [], 32
    while pos < len(data):
        size, pts = struct.unpack_from("<IQ", data, pos)
        frames.append((pts, data[pos + 12 : pos + 12 + size]))
        pos += 12 + size
        assert pos <= len(data), "the last IVF frame is truncated"
    return Ivf(fourcc, width, height, rate, scale, count, frames)


def is_keyframe(fourcc: bytes, payload: bytes) -> bool:
    """Whether a VP8/VP9 frame is a keyframe, from its first header byte."""
    if fourcc == b"VP80":
        return payload[0] & 1 == 0  # frame tag bit 0: 0 = key frame
    # VP9 profile 0 uncompressed header: frame_marker (2 bits), profile (2),
    # show_existing_frame (1), frame_type (1, 0 = key frame).
    return payload[0] >> 6 == 2 and payload[0] & 0x0C == 0


def write_source(directory: Path, count: int, width: int, height: int) -> Path:
    """``count`` PNG frames of moving content, converted to Y4M by the caller's png2y4m."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(make_frame(i, width, height, depth=8)).save(directory / f"{i + 1:08d}.png")
    return directory / "%08d.png"


def make_y4m(png2y4m: Path, directory: Path, count: int, width: int, height: int) -> Path:
    pattern = write_source(directory / "png", count, width, height)
    out = directory / "source.y4m"
    subprocess.run([str(png2y4m), "-o", str(out), str(pattern)], check=True, timeout=60)
    return out


def encode(
    binary: Path, source: Path, out: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(binary), *args, "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    return result


def decode(ivf: Path) -> Video:
    """Decode with Debian's vpxdec into Y4M and read that back."""
    assert VPXDEC is not None
    out = ivf.with_suffix(".decoded.y4m")
    result = subprocess.run(
        [VPXDEC, "-o", str(out), str(ivf)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return read_y4m(out)


def mean_psnr(decoded: Video, source: Video) -> float:
    """Mean over frames of the PSNR of all three planes together (6:1:1 weighting)."""
    values = []
    for got, want in zip(decoded.frames, source.frames, strict=True):
        a = np.concatenate([p.ravel() for p in got])
        b = np.concatenate([p.ravel() for p in want])
        values.append(min(psnr(a, b), 99.0))
    return float(np.mean(values))


def assert_one_error_line(result: subprocess.CompletedProcess[str], name: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"vpxenc: {name}: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def source(png2y4m_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_y4m(png2y4m_binary, tmp_path_factory.mktemp("src"), FRAMES, *SIZE)


def test_default_build_is_static(vpxenc_binary: Path) -> None:
    with vpxenc_binary.open("rb") as f:
        elf = ELFFile(f)
        assert not any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments())
        dynamic = elf.get_section_by_name(".dynamic")
        assert dynamic is None or not any(
            tag.entry.d_tag == "DT_NEEDED" for tag in dynamic.iter_tags()
        )


def test_lambdaize_accepts_it(vpxenc_binary: Path) -> None:
    info = inspect_executable(vpxenc_binary)
    assert info.kind == "elf" and not info.dynamic and info.needed == ()
    bundle = build_bundle(vpxenc_binary, post_args="-o ##OUTFILE## ##INFILE##")
    assert "vpxenc" in bundle.entries and bundle.architecture == "x86_64"
    assert bundle.command == "./vpxenc -o ##OUTFILE## ##INFILE##"


def test_help(vpxenc_binary: Path) -> None:
    result = subprocess.run(
        [str(vpxenc_binary), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: vpxenc [options] INPUT\n")
    for flag in (
        "--output", "--codec", "--good", "--rt", "--cpu-used", "--target-bitrate",
        "--cq-level", "--kf-max-dist", "--threads", "--max-pixels", "--help",
    ):  # fmt: skip
        assert flag in result.stdout, flag


# (codec, settings, PSNR floor in dB for this content at 96x64): libvpx 1.12 gives 38.8, 46.9,
# 42.4, 44.5 and 45.9 dB; the floors sit about 3 dB under, so a broken pipeline (shifted
# planes, a wrong stride, dropped or reordered frames) fails while a libvpx update does not.
SETTINGS = [
    ("vp9", ["--cq-level", "32"], 36.0),
    ("vp9", ["--cq-level", "10", "--cpu-used", "2"], 44.0),
    ("vp9", ["--target-bitrate", "400", "--rt", "--cpu-used", "8"], 39.0),
    ("vp8", ["--cq-level", "20", "--threads", "2"], 41.0),
    ("vp8", ["--target-bitrate", "300", "--rt", "--cpu-used", "8"], 42.0),
]


@needs_vpxdec
@pytest.mark.parametrize(("codec", "settings", "floor"), SETTINGS)
def test_decodes_to_the_source(
    vpxenc_binary: Path,
    source: Path,
    tmp_path: Path,
    codec: str,
    settings: list[str],
    floor: float,
) -> None:
    out = tmp_path / "out.ivf"
    encode(vpxenc_binary, source, out, "--codec", codec, *settings)
    ivf = read_ivf(out)
    assert ivf.fourcc == {"vp9": b"VP90", "vp8": b"VP80"}[codec]
    assert (ivf.width, ivf.height) == SIZE
    assert (ivf.rate, ivf.scale) == (24, 1)  # png2y4m's default F24:1
    assert ivf.count == len(ivf.frames) == FRAMES
    assert [pts for pts, _ in ivf.frames] == list(range(FRAMES))
    assert is_keyframe(ivf.fourcc, ivf.frames[0][1])
    decoded, want = decode(out), read_y4m(source)
    assert (decoded.width, decoded.height) == SIZE
    assert len(decoded.frames) == FRAMES
    value = mean_psnr(decoded, want)
    assert value > floor, f"{codec} {settings}: PSNR {value:.2f} dB, floor {floor} dB"


def test_quality_and_bitrate_settings_take_effect(
    vpxenc_binary: Path, source: Path, tmp_path: Path
) -> None:
    sizes = {}
    for name, settings in {
        "cq10": ["--cq-level", "10"],
        "cq50": ["--cq-level", "50"],
        "br50": ["--target-bitrate", "50"],
        "br800": ["--target-bitrate", "800"],
    }.items():
        encode(vpxenc_binary, source, tmp_path / f"{name}.ivf", *settings)
        sizes[name] = (tmp_path / f"{name}.ivf").stat().st_size
    assert sizes["cq10"] > 2 * sizes["cq50"]
    assert sizes["br800"] > 2 * sizes["br50"]


@pytest.mark.skipif(not DEBIAN_VPXENC.is_file(), reason="Debian's vpxenc is not installed")
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ([], ["--codec=vp9", "--good", "--cpu-used=4", "--end-usage=q", "--cq-level=32"]),
        (
            ["--codec", "vp8", "--rt", "--cpu-used", "8", "--target-bitrate", "300"],
            # VP8 realtime: our speed is fixed, which is vpxenc's negative --cpu-used.
            ["--codec=vp8", "--rt", "--cpu-used=-8", "--end-usage=vbr", "--target-bitrate=300"],
        ),
        (
            ["--threads", "2", "--target-bitrate", "500", "--kf-max-dist", "5"],
            [
                "--codec=vp9", "--good", "--cpu-used=4", "--threads=2", "--end-usage=vbr",
                "--target-bitrate=500", "--kf-max-dist=5",
            ],
        ),
    ],
)  # fmt: skip
def test_same_bytes_as_debian_vpxenc(
    vpxenc_binary: Path, source: Path, tmp_path: Path, ours: list[str], theirs: list[str]
) -> None:
    """Same library, same settings, one pass: the same IVF, byte for byte."""
    encode(vpxenc_binary, source, tmp_path / "ours.ivf", *ours)
    subprocess.run(
        [str(DEBIAN_VPXENC), *theirs, "--passes=1", "--ivf", "-q", "-o",
         str(tmp_path / "theirs.ivf"), str(source)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert (tmp_path / "ours.ivf").read_bytes() == (tmp_path / "theirs.ivf").read_bytes()


@pytest.mark.parametrize("codec", ["vp9", "vp8"])
@pytest.mark.parametrize("deadline", ["--good", "--rt"])
def test_same_bytes_every_run(
    vpxenc_binary: Path, source: Path, tmp_path: Path, codec: str, deadline: str
) -> None:
    runs = []
    for i in range(3):
        out = tmp_path / f"{i}.ivf"
        encode(vpxenc_binary, source, out, "--codec", codec, deadline, "--threads", "2")
        runs.append(out.read_bytes())
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("codec", ["vp9", "vp8"])
def test_good_stays_good_at_one_frame_per_second(
    vpxenc_binary: Path, source: Path, tmp_path: Path, codec: str
) -> None:
    """libvpx takes a deadline no longer than a frame's duration as realtime; at F1:1 the
    standard good-quality deadline (1 s) is exactly that, so --good must pass a longer one."""
    slow = tmp_path / "slow.y4m"
    slow.write_bytes(source.read_bytes().replace(b" F24:1 ", b" F1:1 ", 1))
    outputs = {}
    for deadline in ("--good", "--rt"):
        encode(vpxenc_binary, slow, tmp_path / "o.ivf", "--codec", codec, deadline)
        outputs[deadline] = (tmp_path / "o.ivf").read_bytes()
    assert read_ivf(tmp_path / "o.ivf").rate == 1
    assert outputs["--good"] != outputs["--rt"]


def test_kf_max_dist_places_keyframes(vpxenc_binary: Path, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "kf.ivf"
    encode(vpxenc_binary, source, out, "--codec", "vp8", "--kf-max-dist", "4")
    ivf = read_ivf(out)
    keys = [i for i, (_, payload) in enumerate(ivf.frames) if is_keyframe(ivf.fourcc, payload)]
    assert keys[0] == 0
    assert all(b - a <= 4 for a, b in zip(keys, [*keys[1:], FRAMES], strict=True)), keys


@needs_vpxdec
@pytest.mark.parametrize("codec", ["vp9", "vp8"])
@pytest.mark.parametrize("size", [(45, 31), (1, 1), (3, 130)])
def test_odd_sizes(
    vpxenc_binary: Path, png2y4m_binary: Path, tmp_path: Path, codec: str, size: tuple[int, int]
) -> None:
    """Odd widths and heights: 4:2:0 chroma planes of ceil(w/2) x ceil(h/2), as libvpx takes."""
    src = make_y4m(png2y4m_binary, tmp_path, 3, *size)
    out = tmp_path / "odd.ivf"
    encode(vpxenc_binary, src, out, "--codec", codec, "--cq-level", "4")
    decoded = decode(out)
    assert (decoded.width, decoded.height) == size
    assert len(decoded.frames) == 3
    assert mean_psnr(decoded, read_y4m(src)) > 30.0  # 1x1 frames: three samples, noisy


def test_reads_stdin(vpxenc_binary: Path, source: Path, tmp_path: Path) -> None:
    encode(vpxenc_binary, source, tmp_path / "file.ivf")
    with source.open("rb") as f:
        result = subprocess.run(
            [str(vpxenc_binary), "-o", str(tmp_path / "pipe.ivf"), "-"],
            stdin=f, capture_output=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pipe.ivf").read_bytes() == (tmp_path / "file.ivf").read_bytes()


def y4m(header: str, frames: int = 1, w: int = 8, h: int = 8) -> bytes:
    frame = b"FRAME\n" + bytes(w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2))
    return header.encode() + b"\n" + frame * frames


GOOD = "YUV4MPEG2 W8 H8 F25:1 Ip A1:1 C420jpeg"

# (name, file contents, what the one error line must say)
BAD_INPUTS = [
    ("empty", b"", "empty input"),
    ("garbage", b"\x89PNG\r\n\x1a\n" + bytes(100), "not a Y4M file"),
    ("no-newline", b"YUV4MPEG2 W8 H8 F25:1" + b" X" * 600, "no header line"),
    ("header-only", y4m(GOOD, 0), "no frame in the input"),
    ("truncated-header", b"YUV4MPEG2 W8 H8", "truncated Y4M header"),
    ("truncated-frame", y4m(GOOD, 2)[:-10], "frame 1 is truncated: 86 of its 96 bytes"),
    ("truncated-frame-header", y4m(GOOD, 1) + b"FRA", "truncated frame header after 1 frames"),
    ("bad-frame-header", y4m(GOOD, 1) + b"FRAMX\n", "frame 1 does not start with 'FRAME'"),
    ("chroma-444", y4m("YUV4MPEG2 W8 H8 F25:1 C444"), "chroma 'C444' is not supported"),
    ("chroma-422", y4m("YUV4MPEG2 W8 H8 F25:1 C422"), "chroma 'C422' is not supported"),
    ("mono", y4m("YUV4MPEG2 W8 H8 F25:1 Cmono"), "chroma 'Cmono' is not supported"),
    ("10-bit", y4m("YUV4MPEG2 W8 H8 F25:1 C420p10"), "high bit depth Y4M ('C420p10')"),
    ("interlaced", y4m("YUV4MPEG2 W8 H8 F25:1 It C420"), "interlaced Y4M ('It')"),
    ("zero-width", y4m("YUV4MPEG2 W0 H8 F25:1"), "bad width 'W0'"),
    ("huge-height", y4m("YUV4MPEG2 W8 H99999999999 F25:1"), "bad height 'H99999999999'"),
    ("no-size", y4m("YUV4MPEG2 F25:1"), "no width (W) or height (H)"),
    ("no-rate", y4m("YUV4MPEG2 W8 H8"), "no frame rate (F)"),
    ("zero-rate", y4m("YUV4MPEG2 W8 H8 F0:1"), "bad frame rate 'F0:1'"),
    ("huge-rate", y4m("YUV4MPEG2 W8 H8 F1:2000000000"), "F1:2000000000 is out of range"),
    ("control-byte", b"YUV4MPEG2 W8 H8 F25:1\x00\n", "non-printable byte (0x00)"),
    (
        "too-many-pixels",
        b"YUV4MPEG2 W65535 H65535 F25:1\nFRAME\n",
        "frames are 65535x65535 = 4294836225 pixels, above the limit",
    ),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_one_line_output_untouched(
    vpxenc_binary: Path, tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    path = tmp_path / f"{name}.y4m"
    path.write_bytes(data)
    out = tmp_path / "out.ivf"
    out.write_bytes(b"the previous output")
    result = encode(vpxenc_binary, path, out, check=False)
    line = assert_one_error_line(result, str(path))
    assert message in line, line
    assert out.read_bytes() == b"the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "out.ivf"])


def test_vp8_size_limit(vpxenc_binary: Path, tmp_path: Path) -> None:
    path = tmp_path / "wide.y4m"
    path.write_bytes(b"YUV4MPEG2 W16384 H2 F25:1\nFRAME\n")
    result = encode(vpxenc_binary, path, tmp_path / "o.ivf", "--codec", "vp8", check=False)
    assert "VP8 takes at most 16383x16383 (use VP9)" in assert_one_error_line(result, str(path))


@pytest.mark.parametrize(
    ("args", "name", "message"),
    [
        (["--codec", "h264"], "--codec", "'h264' is not a codec (vp9 or vp8)"),
        (["--cq-level", "64"], "--cq-level", "'64' is not an integer from 0 to 63"),
        (["--cq-level", "9", "--target-bitrate", "9"], "options", "not both"),
        (["--cpu-used", "12"], "--cpu-used", "'12' is out of range for VP9 (-9 to 9)"),
        (["--cpu-used", "x"], "--cpu-used", "'x' is not an integer"),
        (["--threads", "0"], "--threads", "'0' is not an integer from 1 to 64"),
        (["--codec", "vp8", "--rt", "--cpu-used", "0"], "--cpu-used", "a speed from 1 to 16"),
        (["--bogus"], "options", "unknown option '--bogus'"),
        (["--threads"], "options", "needs a value"),
    ],
)
def test_bad_options(
    vpxenc_binary: Path, source: Path, tmp_path: Path, args: list[str], name: str, message: str
) -> None:
    # The options come last, so a value-less option is the last word (GNU getopt permutes).
    result = subprocess.run(
        [str(vpxenc_binary), "-o", str(tmp_path / "o.ivf"), str(source), *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert message in assert_one_error_line(result, name)
    assert not (tmp_path / "o.ivf").exists()


def test_missing_input_and_unwritable_output(
    vpxenc_binary: Path, source: Path, tmp_path: Path
) -> None:
    result = encode(vpxenc_binary, tmp_path / "nope.y4m", tmp_path / "o.ivf", check=False)
    assert "No such file or directory" in assert_one_error_line(result, str(tmp_path / "nope.y4m"))
    target = tmp_path / "no" / "dir" / "o.ivf"
    result = encode(vpxenc_binary, source, target, check=False)
    assert "cannot open for writing" in assert_one_error_line(result, str(target))
    result = subprocess.run(
        [str(vpxenc_binary), str(source)], capture_output=True, text=True, timeout=30
    )
    assert "-o/--output is required" in assert_one_error_line(result, "options")
    result = encode(vpxenc_binary, source, source, check=False)
    assert "the output may not be the input" in assert_one_error_line(result, "options")


def test_output_may_not_be_the_input_by_another_name(
    vpxenc_binary: Path, source: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link.y4m"
    link.symlink_to(source)
    before = source.read_bytes()
    result = encode(vpxenc_binary, source, link, check=False)
    assert "the output may not be the input" in assert_one_error_line(result, "options")
    assert source.read_bytes() == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_leaves_no_temporary_file(
    vpxenc_binary: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """Killed while it waits for input (a Lambda timeout, a ^C), it removes its temporary
    output and dies of the signal."""
    out = tmp_path / "o.ivf"
    proc = subprocess.Popen(
        [str(vpxenc_binary), "-o", str(out), "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(y4m(GOOD, 1) + b"FRAME\n")
        proc.stdin.flush()
        assert wait_for(lambda: any(p.name.startswith("o.ivf.tmp") for p in tmp_path.iterdir()))
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == -sig
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        if proc.stderr:
            proc.stderr.close()
    assert list(tmp_path.iterdir()) == []


def test_output_mode_follows_umask(vpxenc_binary: Path, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.ivf"
    encode(vpxenc_binary, source, out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


@needs_vpxdec
def test_docs_block_runs_from_the_checkout(
    vpxenc_binary: Path, png2y4m_binary: Path, tmp_path: Path
) -> None:
    """docs/vpxenc.md's commands, run as a user runs them in the checkout (a directory with
    the checkout's function/ and .venv, so nothing is written into the real one)."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "vpxenc.md").read_text()
    blocks = re.findall(r"^```sh[ \t]*\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 1
    for name in ("function", ".venv"):
        (tmp_path / name).symlink_to(root / name)
    env = {
        "PATH": f"{root / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    done = subprocess.run(
        ["bash", "-e", "-x", "-c", blocks[0]], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(decode(tmp_path / "clip.ivf").frames) == 24
    assert read_ivf(tmp_path / "clip8.ivf").fourcc == b"VP80"
    assert read_y4m(tmp_path / "decoded.y4m").width == 320


@pytest.mark.skipif(not (shutil.which("ffmpeg") and shutil.which("ffprobe")),
                    reason="ffmpeg is not installed (apt-get install ffmpeg)")
def test_docs_ffmpeg_block_copies_a_stitched_video(
    vpxenc_binary: Path, source: Path, tmp_path: Path
) -> None:
    """docs/encode.md's ffmpeg commands put a stitched VP9 video into WebM and MP4 without
    re-encoding: every frame there, in ffmpeg's own reading of the result."""
    from mu import ivf

    chunks = []
    for n in range(2):
        encode(vpxenc_binary, source, tmp_path / f"{n}.ivf")
        chunks.append(ivf.read((tmp_path / f"{n}.ivf").read_bytes()))
    (tmp_path / "clip.ivf").write_bytes(ivf.write(ivf.stitch(chunks)))
    frames = sum(len(c.frames) for c in chunks)
    text = (Path(__file__).resolve().parents[2] / "docs" / "encode.md").read_text()
    (block,) = [b for b in re.findall(r"^```sh[ \t]*\n(.*?)^```", text, re.M | re.S)
                if b.startswith("ffmpeg ")]
    done = subprocess.run(["bash", "-e", "-c", block.replace("ffmpeg ", "ffmpeg -v error ")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("clip.webm", "clip.mp4"):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
             "-show_entries", "stream=codec_name,nb_read_packets", "-of", "csv=p=0", name],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
        assert probe.stdout.strip() == f"vp9,{frames}", (name, probe.stdout)
