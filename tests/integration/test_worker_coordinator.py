"""The real coordinator (pyOpenSSL, selectors) against real workers (stdlib ssl), on loopback.

A thread launcher stands in for Lambda: each "invocation" runs
:func:`mu.worker.session.run` with the coordinator's payload in a thread. The png2y4m job
converts two tiny frames per worker from a moto S3 server with the real binary (or the shell
stand-in when the binary cannot be built).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mu.apps.png2y4m import ConfigState, Png2Y4MConfig
from mu.config import RunConfig
from mu.coordinator import Coordinator
from mu.launch import FunctionSpec, Invocation, LaunchReport, LaunchSpec
from mu.tls import KeySet
from mu.worker import session
from tests.worker_helpers import COMMAND, WAIT, install_png2y4m, moto_s3, tiny_png

BUCKET = "mu-worker-coordinator"


@pytest.fixture
def function_dir(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bool]:
    directory = tmp_path / "function"
    directory.mkdir()
    return directory, install_png2y4m(request, directory)


class ThreadLauncher:
    """A launcher whose invocations are worker sessions in threads of this process."""

    name = "threads"

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.threads: list[threading.Thread] = []
        self.summaries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def create_function(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        return {"FunctionName": spec.name}

    def function_exists(self, name: str, region: str) -> bool:
        return True

    def delete_function(self, name: str, region: str) -> None:
        return None

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        event = json.loads(spec.payload)
        now = time.monotonic()
        for _ in range(spec.count):
            thread = threading.Thread(target=self._worker, args=(event,), daemon=True)
            self.threads.append(thread)
            thread.start()
        invocations = tuple(
            Invocation(i, spec.regions[0], True, status=202, sent_at=now, done_at=now)
            for i in range(spec.count)
        )
        return LaunchReport(invocations, now, now)

    def _worker(self, event: dict[str, Any]) -> None:
        summary = session.run(event, command=COMMAND, cwd=str(self.cwd))
        with self._lock:
            self.summaries.append(summary)

    def close(self) -> None:
        return None

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)
        assert not any(t.is_alive() for t in self.threads), "a worker session did not end"


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "no-tls"])
def test_coordinator_drives_real_workers(
    tls: bool,
    keys: KeySet,
    function_dir: tuple[Path, bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cwd, real_binary = function_dir
    cfg = Png2Y4MConfig(video="pair", bucket=BUCKET, informat="png16", frames=2)
    launcher = ThreadLauncher(cwd)
    with moto_s3(monkeypatch, BUCKET) as s3:
        for number in range(1, 5):
            s3.put_object(Bucket=BUCKET, Key=cfg.input_key(number), Body=tiny_png(number * 40))
        coordinator = Coordinator(
            ConfigState,
            cfg,
            RunConfig(num_actors=2, port=0, run_deadline=WAIT, tls=tls),
            keys if tls else None,
            launcher=launcher,
            function_name="png2y4m",
            payload_fields={"bucket": BUCKET, "region": "us-east-1", "timeout": 30},
        )
        try:
            result = coordinator.run()
        finally:
            launcher.join()
        outputs = [
            s3.get_object(Bucket=BUCKET, Key=cfg.output_key(chunk))["Body"].read()
            for chunk in (0, 1)
        ]

    assert result.exit_status == 0, result.failed
    assert sorted(a.actor for a in result.actors) == [0, 1]
    assert result.rejected == 0
    assert [s["exit"] for s in launcher.summaries] == ["quit", "quit"], launcher.summaries
    assert all(s["errors"] == 0 for s in launcher.summaries)
    assert not any(os.path.exists(s["tmpdir"]) for s in launcher.summaries)
    for data in outputs:
        assert data.startswith(b"YUV4MPEG2") if real_binary else len(data) > 0
