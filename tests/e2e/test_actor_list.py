"""``-N A,B,C`` end to end: exactly those actors run, alone and with ``--resume``.

The real ``mu png2y4m`` command runs in its own process on the local backend, attached to an
emulator and a moto S3 server started here so that both runs see the same bucket: real
worker processes, mutual TLS and the real static binary. What is checked is what a user
sees: the chunks in S3 and in ``--output-dir``, and the actors the run record names.
Nothing binds anything but 127.0.0.1; the servers are stopped in ``finally``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from backends.local import LOCAL_CREDENTIALS
from emulator.s3 import S3Server
from emulator.server import ThreadedEmulatorServer
from mu.demo import verify_chunk
from mu.frames import write_frames

W, H = 48, 32
PER_CHUNK = 2
CHUNKS = 6
BUCKET, VIDEO = "actor-list", "sel"
OUTPUT_PREFIX = f"{VIDEO}-y4m_{PER_CHUNK:02d}/"
RUN_TIMEOUT = 240.0  # seconds: a bound on one mu process, far above its real duration


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Any]]:
    """An emulator and its S3 that outlive each ``mu`` run: (lambda url, s3 url, client)."""
    s3 = S3Server("127.0.0.1")
    s3.start()
    try:
        emulator = ThreadedEmulatorServer(
            state_dir=tmp_path_factory.mktemp("emulator"), s3_endpoint_url=s3.url
        )
        emulator.start()
        try:
            client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1",
                                  **LOCAL_CREDENTIALS)
            yield emulator.endpoint_url, s3.url, client
        finally:
            emulator.stop()
    finally:
        s3.stop()


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_frames(tmp_path_factory.mktemp("frames"), CHUNKS * PER_CHUNK, W, H, depth=16)


def mu_png2y4m(cloud: tuple[str, str, Any], binary: Path, workdir: Path, *argv: str
               ) -> subprocess.CompletedProcess[str]:
    lambda_url, s3_url, _ = cloud
    return subprocess.run(
        [sys.executable, "-m", "mu.cli", "png2y4m", "--backend", "local",
         "--endpoint-url", lambda_url, "--s3-endpoint-url", s3_url, "-t", "0",
         "--binary", str(binary), "-n", str(CHUNKS), "-f", str(PER_CHUNK), "-v", VIDEO,
         "-b", BUCKET, *argv],
        cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )


def outputs_in_s3(client: Any) -> set[int]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=OUTPUT_PREFIX)
    return {int(o["Key"][len(OUTPUT_PREFIX):].split(".")[0]) for o in listing.get("Contents", [])}


def actors_in_record(path: Path) -> list[int]:
    return sorted(json.loads(line)["actor"] for line in path.read_text().splitlines() if line)


def check_outputs(directory: Path, chunks: set[int], frames: list[Path]) -> None:
    assert {p.name for p in directory.glob("*.y4m")} == {f"{c:08d}.y4m" for c in chunks}
    for chunk in chunks:
        # Chunk c holds frames 1 + 2c and 2 + 2c: the actor number picked the frames.
        check = verify_chunk(directory / f"{chunk:08d}.y4m",
                             frames[chunk * PER_CHUNK:(chunk + 1) * PER_CHUNK])
        assert check.ok, check


def test_actor_list_runs_exactly_those_actors_then_resume_runs_only_the_rest(
    cloud: tuple[str, str, Any], frames: list[Path], png2y4m_binary: Path, tmp_path: Path
) -> None:
    client = cloud[2]
    first = mu_png2y4m(cloud, png2y4m_binary, tmp_path, "-N", "1,3-4",
                       "--input-dir", str(frames[0].parent),
                       "--output-dir", str(tmp_path / "out1"), "-O", str(tmp_path / "r1.jsonl"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert outputs_in_s3(client) == {1, 3, 4}
    check_outputs(tmp_path / "out1", {1, 3, 4}, frames)
    assert actors_in_record(tmp_path / "r1.jsonl") == [1, 3, 4]

    # The same list plus actor 2, resumed: only 2 runs; all four are downloaded.
    again = mu_png2y4m(cloud, png2y4m_binary, tmp_path, "-N", "4,2,1,3", "--resume",
                       "--output-dir", str(tmp_path / "out2"), "-O", str(tmp_path / "r2.jsonl"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "--resume: 3 of 4 chunks are already complete; 1 to run" in again.stderr
    assert actors_in_record(tmp_path / "r2.jsonl") == [2]
    assert outputs_in_s3(client) == {1, 2, 3, 4}
    check_outputs(tmp_path / "out2", {1, 2, 3, 4}, frames)
