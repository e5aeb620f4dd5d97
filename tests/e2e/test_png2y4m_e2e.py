"""The png2y4m flow end to end on the local backend: real emulator, real moto S3 over HTTP,
real worker processes, real mutual TLS, the real static binary.

One local backend (emulator + S3) serves the module; each test uses its own bucket.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends.local import LOCAL_CREDENTIALS, LocalLauncher
from mu.apps.png2y4m_run import Png2Y4MJob
from mu.cli import parse_png2y4m
from mu.coordinator import RunResult as CoordinatorResult
from mu.demo import read_png
from mu.frames import write_frames
from mu.launch import Site
from mu.runopts import run
from mu.y4m import convert_frame, psnr, read_y4m

W, H = 96, 64


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_frames(tmp_path_factory.mktemp("frames"), 24, W, H, depth=16)


@dataclass(frozen=True)
class Ran:
    """A run's result and its report (what a user sees on stderr)."""

    exit_status: int
    result: CoordinatorResult | None
    outputs: tuple[str, ...]
    problems: tuple[str, ...]
    report: str


def go(local: Site, s3: Any, argv: list[str], binary: Path) -> Ran:
    job, options, _where = parse_png2y4m(
        ["--backend", "local", "-t", "0", "--binary", str(binary), *argv])
    stream = io.StringIO()
    done = run(Png2Y4MJob(job), options, local, out=stream)
    return Ran(done.exit_status, done.run, done.outputs, done.problems, stream.getvalue())


def check_chunk(path: Path, pngs: list[Path]) -> None:
    video = read_y4m(path)
    assert (video.width, video.height) == (W, H)
    assert len(video.frames) == len(pngs)
    for frame, png_path in zip(video.frames, pngs, strict=True):
        rgb, depth = read_png(png_path)
        reference = convert_frame(rgb, depth, video.chroma)
        for plane in range(3):
            assert psnr(frame[plane], reference[plane]) > 45.0


def test_four_workers_convert_24_frames(
    local: Site, s3: Any, frames: list[Path], png2y4m_binary: Path, tmp_path: Path
) -> None:
    record = tmp_path / "run.jsonl"
    outcome = go(local, s3, [
        "-n", "4", "-f", "6", "-v", "clip", "-b", "e2e-basic", "--input-dir",
        str(frames[0].parent), "--output-dir", str(tmp_path / "out"), "-O", str(record),
    ], png2y4m_binary)
    assert outcome.exit_status == 0, outcome.report
    assert sorted(Path(p).name for p in outcome.outputs) == [f"{c:08d}.y4m" for c in range(4)]
    for chunk in range(4):
        check_chunk(tmp_path / "out" / f"{chunk:08d}.y4m", frames[chunk * 6 : chunk * 6 + 6])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="e2e-basic")["Contents"]]
    assert [k for k in keys if k.startswith("clip-y4m_06/")] == [
        f"clip-y4m_06/{c:08d}.y4m" for c in range(4)
    ]
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(r["actor"] for r in rows) == [0, 1, 2, 3]
    assert all(r["ok"] and r["state"] == "FinalState" for r in rows)
    states = [name for _, name in rows[0]["timestamps"]]
    assert states[0] == "ConfigState" and states[-1] == "FinalState"
    assert states.count("RetrieveAndRunState") == 6

    # mu plot draws the real record.
    out = tmp_path / "timeline.png"
    done = subprocess.run(
        [sys.executable, "-m", "mu.cli", "plot", str(record), "-o", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_offset_and_extra_workers(
    local: Site, s3: Any, frames: list[Path], png2y4m_binary: Path, tmp_path: Path
) -> None:
    outcome = go(local, s3, [
        "-n", "2", "-f", "4", "-o", "3", "-X", "2", "-v", "off", "-b", "e2e-offset",
        "--input-dir", str(frames[0].parent), "--output-dir", str(tmp_path),
    ], png2y4m_binary)
    assert outcome.exit_status == 0, outcome.report
    # Chunks 3 and 4 are frames 13..16 and 17..20.
    check_chunk(tmp_path / "00000003.y4m", frames[12:16])
    check_chunk(tmp_path / "00000004.y4m", frames[16:20])
    assert not (tmp_path / "00000000.y4m").exists()
    result = outcome.result
    assert result is not None
    assert sorted(a.actor for a in result.actors) == [3, 4]


def test_corrupt_frame_fails_only_its_worker(
    local: Site, s3: Any, frames: list[Path], png2y4m_binary: Path, tmp_path: Path
) -> None:
    bad_dir = tmp_path / "frames"
    bad_dir.mkdir()
    for i, src in enumerate(frames[:12]):
        data = bytearray(src.read_bytes())
        if i == 7:  # frame 8: second chunk
            data[len(data) // 2] ^= 0xFF
        (bad_dir / src.name).write_bytes(bytes(data))
    outcome = go(local, s3, [
        "-n", "3", "-f", "4", "-v", "bad", "-b", "e2e-corrupt", "--input-dir", str(bad_dir),
        "--output-dir", str(tmp_path / "out"),
    ], png2y4m_binary)
    assert outcome.exit_status != 0
    assert outcome.result is not None
    by_actor = {a.actor: a for a in outcome.result.actors}
    assert by_actor[0].ok and by_actor[2].ok and not by_actor[1].ok
    failed = by_actor[1]
    assert failed.state == "RetrieveAndRunState"  # where it failed, not ErrorState
    assert "00000008.png" in (failed.error or "")
    # A corrupt frame fails the same way on any worker: one attempt, and the report says so.
    assert [a.attempt for a in outcome.result.actors if a.actor == 1] == [1]
    assert failed.retry.startswith("not retried: the command exited with status")
    report = outcome.report
    assert "1" in report and "00000008.png" in report
    # The good chunks are finished and kept.
    check_chunk(tmp_path / "out" / "00000000.y4m", frames[0:4])
    check_chunk(tmp_path / "out" / "00000002.y4m", frames[8:12])
    assert not (tmp_path / "out" / "00000001.y4m").exists()


def test_preflight_reports_every_problem_and_launches_nothing(
    local: Site, s3: Any, png2y4m_binary: Path, tmp_path: Path
) -> None:
    s3.create_bucket(Bucket="e2e-empty")
    outcome = go(local, s3, [
        "-n", "2", "-f", "3", "-v", "nothing", "-b", "e2e-empty",
        "-c", str(tmp_path / "no-ca.pem"), "-s", str(tmp_path / "no-cert.pem"),
        "-k", str(tmp_path / "no-key.pem"),
    ], png2y4m_binary)
    assert outcome.exit_status == 2
    text = "\n".join(outcome.problems)
    assert "no-ca.pem" in text
    assert "6 input frames are missing" in text or "6 of the 6 input frames" in text
    assert outcome.result is None


def test_cli_through_lambda_backend_against_the_emulator(
    local: Site, s3: Any, frames: list[Path], png2y4m_binary: Path, tmp_path: Path
) -> None:
    """The AWS code path (`--backend lambda`) pointed at the emulator, as a real process."""
    # Stage through the local backend once (deploy + inputs), then run with --backend lambda.
    staged = go(local, s3, [
        "-n", "1", "-f", "2", "-v", "aws", "-b", "e2e-aws", "--input-dir",
        str(frames[0].parent),
    ], png2y4m_binary)
    assert staged.exit_status == 0
    assert isinstance(local.launcher, LocalLauncher)
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "mu.cli", "png2y4m", "--backend", "lambda",
         "--endpoint-url", local.launcher.endpoint_url,
         "--s3-endpoint-url", str(local.launcher.s3_endpoint_url),
         "--host-addr", "127.0.0.1", "-t", "0", "-n", "2", "-f", "3", "-v", "aws",
         "-b", "e2e-aws", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    check_chunk(tmp_path / "out" / "00000000.y4m", frames[0:3])
    check_chunk(tmp_path / "out" / "00000001.y4m", frames[3:6])


def test_reference_reader_sees_studio_range(frames: list[Path]) -> None:
    rgb, depth = read_png(frames[0])
    y, cb, _cr = convert_frame(rgb, depth, "420")
    assert y.dtype == np.uint8 and int(y.min()) >= 16 and int(y.max()) <= 235
    assert cb.shape == ((H + 1) // 2, (W + 1) // 2)
