"""``mu emulator logs FUNCTION`` finds the logs of a running emulator started with
``--state-dir`` (each serving emulator records where it lives), and, when there are none,
says every place it looked and how to point it elsewhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3

from tests.integration.test_emulator import CREDS, invoke, make


def mu(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mu.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_logs_finds_an_emulator_started_with_state_dir(tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # the well-known places live here, not in the user's home
    state = tmp_path / "elsewhere"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mu.cli", "emulator", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]  # readiness: the Lambda API's endpoint
        for _ in range(7):  # the S3 endpoint and the export lines: printed after registering
            proc.stdout.readline()
        lam = boto3.client("lambda", endpoint_url=url, **CREDS)
        name = make(lam)
        _, out = invoke(lam, name, {})
        found = mu(["emulator", "logs", name], env, tmp_path)  # no --state-dir
        assert found.returncode == 0, found.stderr
        assert "hello from the handler" in found.stdout
        assert f"START RequestId: {out['request']}" in found.stdout
        one = mu(["emulator", "logs", name, out["request"]], env, tmp_path)
        assert one.returncode == 0 and "hello from the handler" in one.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert list((cache / "mu" / "emulators").glob("*.json")) == []  # it deregistered
    missing = mu(["emulator", "logs", name], env, tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert str(cache / "mu" / "emulator" / "logs" / name) in missing.stderr
    assert "pass the same --state-dir DIR" in missing.stderr
    again = mu(["emulator", "logs", name, "--state-dir", str(state)], env, tmp_path)
    assert again.returncode == 0 and "hello from the handler" in again.stdout
