"""``mu denoise`` end to end on the local backend: real emulator, moto S3 over HTTP, worker
processes, mutual TLS to the coordinator and to the real relay beside it, the real static
``denoise`` binary.

The property of issue 18 (item 4): the N output chunks, concatenated, are byte for byte the
Python reference (:func:`mu.denoise.filter_video`) run over the whole video in one piece,
for several N, f and r; with faults and retries (item 5) too. Each test uses its own
bucket on the module's one local site.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mu.apps.denoise_check import expected_chunks as reference
from mu.apps.denoise_run import DenoiseJob
from mu.cli import parse_denoise
from mu.launch import Site
from mu.runopts import RunResult, run
from mu.y4m import Video, chroma_size, write_y4m

W, H = 40, 24


@pytest.fixture(scope="module")
def denoise_binary() -> Path:
    """The static denoise binary, built (incrementally) from function/denoise."""
    root = Path(__file__).resolve().parents[2]
    subprocess.run(["make", "-s", "-C", str(root / "function" / "denoise")], check=True)
    return root / "function" / "denoise" / "denoise"


def make_video(frames: int, seed: int, chroma: str = "420") -> Video:
    """Noisy frames: a filter that mixed up frames would change them."""
    rng = np.random.default_rng(seed)
    cw, ch = chroma_size(W, H, chroma)
    video = Video(W, H, chroma=chroma)
    for _ in range(frames):
        video.frames.append((rng.integers(0, 256, (H, W), dtype=np.uint8),
                             rng.integers(0, 256, (ch, cw), dtype=np.uint8),
                             rng.integers(0, 256, (ch, cw), dtype=np.uint8)))
    return video


def chunk_files(video: Video, f: int, directory: Path) -> list[Path]:
    """``video`` cut into chunks of ``f`` frames, written as ``directory/%08d.y4m``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(video.frames) // f):
        path = directory / f"{i:08d}.y4m"
        write_y4m(path, Video(video.width, video.height, video.fps, video.aspect, video.chroma,
                              video.frames[i * f:(i + 1) * f]))
        paths.append(path)
    return paths


def expected_chunks(video: Video, f: int, r: int, directory: Path) -> list[bytes]:
    """The reference over the whole video, cut into chunks as the binary writes them."""
    return [want for want, _ in reference(chunk_files(video, f, directory), r)]


def denoise(local: Site, binary: Path, argv: list[str]) -> tuple[RunResult, str]:
    options, run_options, _site = parse_denoise(
        ["-t", "0", "--relay-port", "0", "--denoiser", str(binary), *argv])
    report = io.StringIO()
    done = run(DenoiseJob(options), run_options, local, out=report)
    return done, report.getvalue()


@pytest.mark.parametrize(("n", "f", "r"), [(4, 3, 2), (3, 2, 2), (2, 4, 1)])
def test_chunks_are_the_whole_video_filtered_byte_for_byte(
    local: Site, s3: Any, denoise_binary: Path, tmp_path: Path, n: int, f: int, r: int
) -> None:
    video = make_video(n * f, seed=n * 100 + f * 10 + r)
    chunk_files(video, f, tmp_path / "in")
    bucket = f"dn-{n}-{f}-{r}"
    record = tmp_path / "run.jsonl"
    done, report = denoise(local, denoise_binary, [
        "-n", str(n), "-f", str(f), "--radius", str(r), "-v", "clip", "-b", bucket,
        "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
        "-O", str(record)])
    assert done.exit_status == 0, report
    want = expected_chunks(video, f, r, tmp_path / "want")
    got = [(tmp_path / "out" / f"{i:08d}.y4m").read_bytes() for i in range(n)]
    assert b"".join(got) == b"".join(want)
    assert got == want
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert [k for k in keys if k.startswith(f"clip-y4m_{f:02d}-tf{r}/")] == [
        f"clip-y4m_{f:02d}-tf{r}/{i:08d}.y4m" for i in range(n)]
    # The halos crossed the relay (two a pair of neighbours, a header and the bytes each),
    # none came from S3.
    assert done.relay is not None and done.relay.frames >= 4 * (n - 1)
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(row["actor"] for row in rows) == list(range(n))
    states = {name for row in rows for _, name in row["timestamps"]}
    assert {"ExchangeState", "FilterState", "LeftEdgeState", "RightEdgeState"} <= states
    assert {"LeftSendState", "RightSendState", "LeftRecvState", "RightRecvState"} <= states
    assert not {"LeftFetchState", "RightFetchState"} & states


def test_part_of_the_video_reads_the_halos_of_chunks_that_do_not_run_from_s3(
    local: Site, s3: Any, denoise_binary: Path, tmp_path: Path
) -> None:
    n, f, r = 4, 3, 3
    video = make_video(n * f, seed=5, chroma="444")
    chunk_files(video, f, tmp_path / "in")
    record = tmp_path / "run.jsonl"
    done, report = denoise(local, denoise_binary, [
        "-n", "4", "-N", "1,2", "-f", str(f), "--radius", str(r), "-v", "part", "-b",
        "dn-part", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
        "-O", str(record)])
    assert done.exit_status == 0, report
    want = expected_chunks(video, f, r, tmp_path / "want")
    assert [(tmp_path / "out" / f"{i:08d}.y4m").read_bytes() for i in (1, 2)] == want[1:3]
    assert not (tmp_path / "out" / "00000000.y4m").exists()
    states = {name for line in record.read_text().splitlines()
              for _, name in json.loads(line)["timestamps"]}
    assert {"LeftFetchState", "RightFetchState", "LeftSendState", "RightSendState"} <= states


def test_faults_during_the_exchange_are_recovered_byte_for_byte(
    local: Site, s3: Any, denoise_binary: Path, tmp_path: Path
) -> None:
    n, f, r = 4, 3, 2
    video = make_video(n * f, seed=11)
    chunk_files(video, f, tmp_path / "in")
    record = tmp_path / "run.jsonl"
    done, report = denoise(local, denoise_binary, [
        "-n", str(n), "-f", str(f), "--radius", str(r), "-v", "chaos", "-b", "dn-chaos",
        "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
        "--faults", "crash=0.3,drop=0.3,seed=3", "--retries", "8", "-m", "120",
        "--halo-timeout", "2", "-O", str(record)])
    assert done.exit_status == 0, report
    want = expected_chunks(video, f, r, tmp_path / "want")
    assert [(tmp_path / "out" / f"{i:08d}.y4m").read_bytes() for i in range(n)] == want
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    # Seed 3 crashes actor 2 twice, the second time in the middle of the exchange (after 12
    # commands: the plans depend on the seed only); its neighbours are not stuck on it.
    failed = [(row["actor"], row["state"]) for row in rows if not row["ok"]]
    assert (2, "ExchangeState") in failed, failed
    assert {row["actor"] for row in rows if row["ok"]} == set(range(n))


def test_a_retry_whose_halos_died_with_its_first_attempt_recovers_them_from_s3(
    local: Site, s3: Any, denoise_binary: Path, tmp_path: Path
) -> None:
    """Seed 13 crashes only actor 1's first attempt, at its 17th command (the filter's run),
    after it has received both halos; its neighbours finish and never send again, so the
    retry (it knows it is one: ``info["attempt"]``) sends its halos and takes the recovery
    path at once on both sides, without waiting for the halo timeout."""
    n, f, r = 3, 2, 2
    video = make_video(n * f, seed=13)
    chunk_files(video, f, tmp_path / "in")
    record = tmp_path / "run.jsonl"
    done, report = denoise(local, denoise_binary, [
        "-n", str(n), "-f", str(f), "--radius", str(r), "-v", "lost", "-b", "dn-lost",
        "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
        "--faults", "crash=0.3,seed=13", "--retries", "2",
        "-O", str(record)])
    assert done.exit_status == 0, report
    want = expected_chunks(video, f, r, tmp_path / "want")
    assert [(tmp_path / "out" / f"{i:08d}.y4m").read_bytes() for i in range(n)] == want
    rows = {(row["actor"], row["attempt"]): row
            for row in map(json.loads, record.read_text().splitlines())}
    assert sorted(rows) == [(0, 1), (1, 1), (1, 2), (2, 1)]
    first, retry = rows[(1, 1)], rows[(1, 2)]
    assert not first["ok"] and first["state"] == "FilterState"
    # Both halos had come through the relay (no side fetched) when it died.
    before = {name for _, name in first["timestamps"]}
    assert {"LeftDoneState", "RightDoneState"} <= before
    assert not {"LeftFetchState", "RightFetchState"} & before
    names = [name for _, name in retry["timestamps"]]
    assert retry["ok"] and {"LeftFetchState", "RightFetchState"} <= set(names)
    assert names.index("LeftSendState") < names.index("LeftFetchState")
    assert not {"LeftRecvState", "RightRecvState", "LeftAwaitState"} & set(names)


def test_preflight_names_missing_chunks_and_missing_neighbours(
    local: Site, s3: Any, denoise_binary: Path, tmp_path: Path
) -> None:
    paths = chunk_files(make_video(6, seed=2), 2, tmp_path / "in")
    s3.create_bucket(Bucket="dn-gaps")
    for chunk in (0, 2):  # the video's chunk 1 is missing, and it ends after chunk 2
        s3.upload_file(str(paths[chunk]), "dn-gaps", f"gap-y4m_02/{chunk:08d}.y4m")
    argv = ["-f", "2", "--radius", "1", "-v", "gap", "-b", "dn-gaps"]
    done, report = denoise(local, denoise_binary, ["-n", "4", *argv])
    assert done.exit_status == 2 and done.run is None, report
    assert ("2 of the 4 input chunks are missing from s3://dn-gaps/gap-y4m_02/ (make them "
            "with `mu png2y4m -f 2`): gap-y4m_02/00000001.y4m, gap-y4m_02/00000003.y4m") \
        in report
    done, report = denoise(local, denoise_binary, ["-N", "0,2", *argv])
    assert done.exit_status == 2 and done.run is None, report
    assert "chunk 1, a neighbour of chunk 0 whose halo it needs, is missing from " \
        "s3://dn-gaps/gap-y4m_02/00000001.y4m" in report
    assert "chunk 1, a neighbour of chunk 2 whose halo it needs" in report
    assert "nothing was launched" in report


def test_radius_above_frames_is_refused_before_launch(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mu.cli", "denoise", "-n", "2", "-f", "2", "--radius", "3",
         "-b", "nowhere"], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mu: error: --radius 3 is more than -f 2 frames per chunk: a chunk's halo of 3 "
        "frames must come from its neighbour alone (use -f >= 3 or a smaller --radius)"]
    assert done.stdout == ""


def test_a_relay_port_that_cannot_be_bound_is_a_preflight_problem(
    local: Site, s3: Any, denoise_binary: Path, tmp_path: Path
) -> None:
    video = make_video(4, seed=1)
    chunk_files(video, 2, tmp_path / "in")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options, run_options, _site = parse_denoise(
            ["-t", "0", "--relay-port", str(port), "--denoiser", str(denoise_binary), "-n",
             "2", "-f", "2", "-b", "dn-taken", "--input-dir", str(tmp_path / "in")])
        report = io.StringIO()
        done = run(DenoiseJob(options), run_options, local, out=report)
    assert done.exit_status == 2 and done.run is None
    assert "nothing was launched" in report.getvalue()
    assert str(port) in report.getvalue()


def test_help_lists_the_job_flags() -> None:
    done = subprocess.run([sys.executable, "-m", "mu.cli", "denoise", "--help"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for flag in ("-n", "-f", "-o", "-v", "-b", "-t", "-l", "-r", "-c", "-s", "-k", "-D",
                 "-O", "-m", "-X", "--backend", "--retries", "--resume", "--faults",
                 "--radius", "--halo-timeout", "--relay-port"):
        assert f" {flag} " in done.stdout or f" {flag}," in done.stdout, flag
    assert " -i " not in done.stdout  # the input is the Y4M chunks
