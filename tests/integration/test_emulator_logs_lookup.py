"""``mu emulator logs FUNCTION`` (and ``mu logs FUNCTION``) find a running emulator, one
started with ``--state-dir`` included (each serving emulator records where it lives and its
endpoints), and read the function's CloudWatch Logs from its embedded moto server; once it
has stopped, they say so in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3

from tests.integration.test_emulator import mu_emulator
from tests.integration.test_logs import invocation, put, stream_of

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def mu(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mu.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_logs_finds_an_emulator_started_with_state_dir(tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # the well-known places live here, not in the user's home
    state = tmp_path / "elsewhere"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    name = "logged"
    with mu_emulator("--state-dir", str(state), stderr=subprocess.DEVNULL, env=env) as proc:
        assert proc.stdout is not None
        proc.stdout.readline()  # readiness: the Lambda API's endpoint
        s3_url = proc.stdout.readline().split()[-1]  # moto: S3, CloudWatch Logs, ...
        while not proc.stdout.readline().startswith("export AWS_DEFAULT_REGION"):
            pass  # the export lines: printed once it has registered and handles SIGTERM
        assert [p.name for p in (cache / "mu" / "emulators").glob("*.json")] == [f"{proc.pid}.json"]
        logs = boto3.client("logs", endpoint_url=s3_url, region_name="us-east-1", **CREDS)
        t = int(time.time() * 1000) - 1000
        put(logs, name, stream_of("e1", t), invocation("req-1", t, ["hello from the handler"]))
        found = mu(["emulator", "logs", name], env, tmp_path)  # no --state-dir
        assert found.returncode == 0, found.stderr
        assert "hello from the handler" in found.stdout
        assert "START RequestId: req-1 Version: $LATEST" in found.stdout
        one = mu(["emulator", "logs", name, "req-1", "--state-dir", str(state)], env, tmp_path)
        assert one.returncode == 0 and "hello from the handler" in one.stdout, one.stderr
        new = mu(["logs", name, "--request-id", "req-1"], env, tmp_path)
        assert new.stdout == one.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert list((cache / "mu" / "emulators").glob("*.json")) == []  # it deregistered
    missing = mu(["emulator", "logs", name], env, tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("mu: error: no emulator is running")
