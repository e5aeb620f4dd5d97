"""``mu png2y4m --backend none``: the coordinator launches nothing, prints how to start
workers by hand, and waits for them.

Everything is real: the coordinator is a ``mu`` subprocess, S3 is a moto server over HTTP on
127.0.0.1, the workers are the function's handler run by hand exactly as the coordinator's
printed lines say (one from an unpacked bundle built by ``mu lambdaize``, one from this
checkout), over mutual TLS, running the real static binary.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import IO, Any

import boto3
import pytest

from emulator.s3 import S3Server
from mu.apps.png2y4m import COMMAND
from mu.frames import write_frames
from mu.y4m import read_y4m

W, H = 64, 48
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
WAIT = 180.0  # bound on every wait; the test never measures time


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A user's shell: AWS credentials, but no S3 endpoint (the printed lines carry it)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        **CREDENTIALS,
    }


def make_bucket(server: S3Server, name: str) -> Any:
    s3 = boto3.client(
        "s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=name)
    return s3


class Lines:
    """Every line a stream prints, read by a thread, handed over through a queue."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._queue.put(line)
        self._queue.put(None)

    def next(self) -> str | None:
        line = self._queue.get(timeout=WAIT)
        if line is not None:
            self.seen.append(line)
        return line

    def text(self) -> str:
        self._thread.join(timeout=WAIT)
        while not self._queue.empty():
            if self.next() is None:
                break
        return "".join(self.seen)


def start_coordinator(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mu.cli", "png2y4m", "--backend", "none", "-t", "0", *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stderr is not None
    return proc, Lines(proc.stderr)


def printed_commands(lines: Lines, proc: subprocess.Popen[str]) -> list[str]:
    """The two ``  $ `` lines the coordinator prints, read as they come."""
    commands: list[str] = []
    while len(commands) < 2:
        line = lines.next()
        assert line is not None, f"mu ended ({proc.wait()}) before saying how:\n" + lines.text()
        if line.startswith("  $ "):
            commands.append(line[4:].rstrip("\n"))
    return commands


def unzip(zip_path: Path, into: Path) -> None:
    """What ``unzip`` does: extract, keeping each entry's permission bits."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            zf.extract(info, into)
            os.chmod(into / info.filename, stat.S_IMODE(info.external_attr >> 16))


def test_hand_started_workers_finish_the_job(
    s3_server: S3Server, env: dict[str, str], png2y4m_binary: Path, tmp_path: Path
) -> None:
    make_bucket(s3_server, "none-run")
    frames = write_frames(tmp_path / "frames", 4, W, H, depth=16)
    # The bundle a user would unpack: mu lambdaize, as the docs show it, without upload.
    built = subprocess.run(
        [sys.executable, "-m", "mu.cli", "lambdaize", str(png2y4m_binary), "", COMMAND,
         "--name", "png2y4m", "--skip-upload", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=WAIT, check=False,
    )
    assert built.returncode == 0, built.stderr
    bundle = tmp_path / "bundle"
    unzip(tmp_path / "png2y4m.zip", bundle)

    payload = tmp_path / "payload.json"
    proc, lines = start_coordinator([
        "--s3-endpoint-url", s3_server.endpoint_url, "-n", "2", "-f", "2", "-v", "hand",
        "-b", "none-run", "--input-dir", str(frames[0].parent),
        "--output-dir", str(tmp_path / "out"), "--payload-out", str(payload),
        "--arrival-timeout", str(WAIT),
    ], env)
    workers: list[subprocess.Popen[str]] = []
    try:
        in_bundle, in_checkout = printed_commands(lines, proc)
        assert f"AWS_ENDPOINT_URL_S3={s3_server.endpoint_url}" in in_bundle
        assert shlex.split(in_bundle)[-2:] == ["lambda_function.py", str(payload.resolve())]
        assert "--command" in in_checkout and COMMAND in in_checkout
        # The payload: the workers' own identity and the CA, never a second private key.
        data = json.loads(payload.read_text())
        assert stat.S_IMODE(payload.stat().st_mode) == 0o600
        assert data["cacert"] and data["wrkcrt"] and data["port"] > 0
        assert payload.read_text().count("PRIVATE KEY-----\\n", 0) == 2  # BEGIN + END, once
        # Start one worker each way, exactly as printed.
        for line, cwd in ((in_bundle, bundle), (in_checkout, tmp_path)):
            workers.append(subprocess.Popen(
                line, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True,
            ))
        assert proc.wait(timeout=WAIT) == 0, lines.text()
        for worker in workers:
            out, _ = worker.communicate(timeout=WAIT)
            assert worker.returncode == 0, out
            assert json.loads(out.strip().splitlines()[-1])["exit"] == "quit", out
    finally:
        for p in (proc, *workers):
            if p.poll() is None:
                p.kill()
                p.wait()
    report = lines.text()
    assert "mu: 2 done, 0 error" in report, report
    assert "Traceback" not in report
    for chunk in range(2):
        video = read_y4m(tmp_path / "out" / f"{chunk:08d}.y4m")
        assert (video.width, video.height, len(video.frames)) == (W, H, 2)


def test_no_worker_ends_after_the_arrival_timeout(
    s3_server: S3Server, env: dict[str, str], tmp_path: Path
) -> None:
    s3 = make_bucket(s3_server, "none-idle")
    for frame in range(1, 3):
        s3.put_object(Bucket="none-idle", Key=f"idle-png16/{frame:08d}.png", Body=b"x")
    proc, lines = start_coordinator([
        "--s3-endpoint-url", s3_server.endpoint_url, "-n", "2", "-f", "1", "-v", "idle",
        "-b", "none-idle", "--arrival-timeout", "1",
    ], env)
    try:
        printed_commands(lines, proc)
        status = proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = lines.text()
    assert status == 1, report
    assert "Traceback" not in report
    for actor in (0, 1):
        assert (f"mu: actor {actor} failed in NotStarted: no worker came for it "
                "(2 launched worker(s) never arrived within 1 s)") in report, report
    assert "mu: 0 done, 2 error" in report
    # The default payload lived in a private temporary directory, gone with the run.
    where = next(line for line in report.splitlines() if "the payload is in " in line)
    path = Path(where.split("the payload is in ")[1].split(" (")[0])
    assert path.name == "payload.json" and not path.parent.exists()
