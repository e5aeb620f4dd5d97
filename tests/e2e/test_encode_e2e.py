"""``mu encode`` end to end on the local backend: real emulator, moto S3 over HTTP, worker
processes, mutual TLS, the real static png2y4m and vpxenc. The stitched video is checked by
a decoder we did not write (Debian's ``vpxdec``): every frame decodes, the size is right, and
the luma PSNR against the source is above the floor stated for the settings.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mu import ivf
from mu.apps.encode_check import MIN_PSNR, check_video
from mu.apps.encode_run import EncodeJob, EncodeOptions
from mu.apps.png2y4m_run import Png2Y4MJob
from mu.frames import write_frames
from mu.launch import Site
from mu.options import Png2Y4MOptions, RunOptions
from mu.runopts import RunResult, run
from mu.y4m import Video, read_y4m

pytestmark = [pytest.mark.skipif(shutil.which("vpxdec") is None,
                                 reason="vpxdec (vpx-tools) is not installed"),
              pytest.mark.usefixtures("vpxenc_binary")]  # the local site deploys it
W, H, FRAMES = 96, 64, 12


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("frames")
    write_frames(directory, FRAMES, W, H, depth=16)
    return directory


@pytest.fixture(scope="module")
def source(frames: Path, png2y4m_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Video:
    """The frames as the encoder sees them: the real png2y4m's Y4M of the whole video."""
    out = tmp_path_factory.mktemp("source") / "source.y4m"
    subprocess.run([str(png2y4m_binary), "-o", str(out), str(frames / "%08d.png")], check=True)
    return read_y4m(out)


def encode(site: Site, out: io.StringIO, run_options: RunOptions | None = None,
           **fields: Any) -> RunResult:
    options = EncodeOptions(**{"workers": 3, "frames": 4, "cpu_used": 8, **fields})
    return run(EncodeJob(options), run_options or RunOptions(port=0), site, out=out)


def test_png_frames_become_one_video_that_vpxdec_plays(
    local: Site, s3: Any, frames: Path, source: Video, tmp_path: Path
) -> None:
    report = io.StringIO()
    done = encode(local, report, video="clip", bucket="enc-png", input_dir=str(frames),
                  output_dir=str(tmp_path))
    assert done.exit_status == 0, report.getvalue()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="enc-png")["Contents"]]
    assert [k for k in keys if k.endswith(".ivf")] == [
        "clip-vp9_04/00000000.ivf", "clip-vp9_04/00000001.ivf", "clip-vp9_04/00000002.ivf",
        "clip.ivf",
    ]
    assert not [k for k in keys if k.endswith(".y4m")]  # no Y4M went through S3
    stitched = tmp_path / "clip.ivf"
    assert s3.get_object(Bucket="enc-png", Key="clip.ivf")["Body"].read() == stitched.read_bytes()
    video = ivf.read(stitched.read_bytes())
    assert (video.header.fourcc, video.header.width, video.header.height) == (b"VP90", W, H)
    assert [f.pts for f in video.frames] == list(range(FRAMES))
    check = check_video(stitched, source)
    assert check.ok, check
    assert (check.frames, check.size) == (FRAMES, (W, H)) and check.psnr > MIN_PSNR
    # Each chunk decodes on its own too (it starts with a keyframe).
    for chunk in range(3):
        part = check_video(tmp_path / f"{chunk:08d}.ivf",
                           Video(W, H, frames=source.frames[chunk * 4:chunk * 4 + 4]))
        assert part.ok, part
    assert f"stitched 3 chunks into s3://enc-png/clip.ivf and {stitched}" in report.getvalue()

    # --resume: every chunk is complete, nothing runs, the video is stitched again.
    again = io.StringIO()
    resumed = encode(local, again, RunOptions(port=0, resume=True), video="clip",
                     bucket="enc-png", output_dir=str(tmp_path / "again"))
    assert resumed.exit_status == 0 and resumed.run is None, again.getvalue()
    assert "--resume: 3 of 3 chunks are already complete; 0 to run" in again.getvalue()
    assert (tmp_path / "again" / "clip.ivf").read_bytes() == stitched.read_bytes()


def test_y4m_chunks_from_png2y4m_encode_to_vp8(
    local: Site, s3: Any, frames: Path, source: Video, tmp_path: Path
) -> None:
    report = io.StringIO()
    made = run(Png2Y4MJob(Png2Y4MOptions(workers=2, frames=6, video="y", bucket="enc-y4m",
                                         input_dir=str(frames))),
               RunOptions(port=0), local, out=report)
    assert made.exit_status == 0, report.getvalue()
    done = encode(local, report, workers=2, frames=6, video="y", bucket="enc-y4m",
                  informat="y4m", codec="vp8", realtime=True, cpu_used=8,
                  target_bitrate=400, output_dir=str(tmp_path))
    assert done.exit_status == 0, report.getvalue()
    video = ivf.read((tmp_path / "y.ivf").read_bytes())
    assert video.header.fourcc == b"VP80" and len(video.frames) == FRAMES
    check = check_video(tmp_path / "y.ivf", source, floor=25.0)
    assert check.ok, check


def test_a_failing_encoder_fails_its_actors_with_its_own_words(
    local: Site, frames: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "vpxenc"
    broken.write_text("#!/bin/sh\necho 'vpxenc: cannot encode this' >&2\nexit 3\n")
    broken.chmod(0o755)
    report = io.StringIO()
    done = encode(local, report, workers=1, video="bad", bucket="enc-bad",
                  input_dir=str(frames), function="encode-broken", encoder=str(broken))
    assert done.exit_status != 0
    assert done.run is not None
    [attempt] = done.run.actors
    assert attempt.state == "EncodeState"
    assert "vpxenc exited with status 3 encoding chunk 0: vpxenc: cannot encode this" \
        in (attempt.error or "")
    assert "the video was not stitched: 1 of 1 chunks are missing" in report.getvalue()


def test_a_corrupt_frame_fails_only_its_chunk_naming_the_frame(
    local: Site, frames: Path, source: Video, tmp_path: Path
) -> None:
    bad = tmp_path / "frames"
    bad.mkdir()
    for i, png in enumerate(sorted(frames.glob("*.png"))):
        data = bytearray(png.read_bytes())
        if i == 5:  # frame 6: chunk 1
            data[len(data) // 2] ^= 0xFF
        (bad / png.name).write_bytes(bytes(data))
    report = io.StringIO()
    done = encode(local, report, video="bad", bucket="enc-corrupt", input_dir=str(bad),
                  output_dir=str(tmp_path / "out"))
    assert done.exit_status != 0 and done.run is not None
    by_actor = {a.actor: a for a in done.run.actors}
    assert by_actor[0].ok and by_actor[2].ok and not by_actor[1].ok
    assert by_actor[1].state == "ConvertState"
    assert (by_actor[1].error or "").startswith(
        "png2y4m exited with status 1 converting the frames of chunk 1: ")
    assert "00000006.png" in (by_actor[1].error or "")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000000.ivf",
                                                                   "00000002.ivf"]
    assert "the video was not stitched: 1 of 3 chunks are missing (first: " \
        "s3://enc-corrupt/bad-vp9_04/00000001.ivf)" in report.getvalue()


def test_missing_inputs_are_reported_before_launch(local: Site, tmp_path: Path) -> None:
    report = io.StringIO()
    done = encode(local, report, workers=2, frames=6, video="none", bucket="enc-missing",
                  informat="y4m")
    assert done.exit_status == 2 and done.run is None
    assert done.problems == (
        "2 of the 2 input Y4M chunks are missing from s3://enc-missing/none-y4m_06/ (make "
        "them with `mu png2y4m -f 6`): none-y4m_06/00000000.y4m, none-y4m_06/00000001.y4m",
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--cq-level", "70"], "mu: error: --cq-level 70 is outside 0..63"),
     (["--codec", "vp8", "--rt", "--cpu-used", "0"],
      "mu: error: --cpu-used 0 with --codec vp8 --rt: give a speed 1..16"),
     (["--backend", "none"], "mu: error: mu encode runs on --backend local or lambda (its "
      "workers call ./png2y4m and ./vpxenc inside the function)")],
    ids=["cq-level", "vp8-rt-speed", "backend-none"],
)
def test_bad_settings_are_one_line(flags: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "mu.cli", "encode", *flags],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [message]


def test_the_command_line_survives_crashing_workers(
    frames: Path, source: Video, tmp_path: Path
) -> None:
    """``mu encode`` as typed, with workers crashing (a rehearsal) and retries to cover them."""
    done = subprocess.run(
        [sys.executable, "-m", "mu.cli", "encode", "-n", "3", "-f", "4", "-v", "clip", "-b",
         "vids", "--cpu-used", "8", "--input-dir", str(frames), "--output-dir",
         str(tmp_path), "-t", "0", "--faults", "crash=0.3,seed=3", "--retries", "5"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "mu: 3 done, 0 error, 0 rejected, 2 retried" in done.stderr
    assert "stitched 3 chunks into s3://vids/clip.ivf" in done.stderr
    check = check_video(tmp_path / "clip.ivf", source)
    assert check.ok and check.frames == FRAMES, check
