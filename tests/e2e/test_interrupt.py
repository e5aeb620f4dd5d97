"""``mu png2y4m`` stopped by SIGTERM or Ctrl-C while it runs: what it started stops, its
temporary folders go, and it ends with one line and a non-zero status, never a traceback.

The run is a local one whose workers all hang (``--faults hang=1``, with a long ``-m``), so
it is certainly still running when the signal comes; readiness is the status line that
shows both workers connected, read from its output.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mu.frames import write_frames

READY = "active 2"  # the status line once both workers are connected
BOUND = 120.0  # seconds: far above the real time of each step


def start(tmp: Path, frames: Path, binary: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.Popen(
        [sys.executable, "-m", "mu.cli", "png2y4m", "-n", "2", "-f", "6", "-t", "0",
         "--binary", str(binary), "--input-dir", str(frames), "-b", "interrupt",
         "-m", "600", "--faults", "hang=1,seed=1"],
        env=env, cwd=tmp.parent, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """Every output line, as it comes; None at EOF."""
    out: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line.rstrip("\n"))
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


def wait_ready(lines: queue.Queue[str | None], seen: list[str]) -> None:
    while True:
        try:
            line = lines.get(timeout=BOUND)
        except queue.Empty:
            pytest.fail("no status line within the bound; output so far:\n" + "\n".join(seen))
        if line is None:
            pytest.fail("mu ended before it was running:\n" + "\n".join(seen))
        seen.append(line)
        if READY in line:
            return


def rest(lines: queue.Queue[str | None], seen: list[str]) -> list[str]:
    while (line := lines.get(timeout=BOUND)) is not None:
        seen.append(line)
    return seen


@pytest.mark.parametrize(
    ("how", "status", "last"),
    [("SIGTERM", 143, "mu: terminated (SIGTERM); "), ("Ctrl-C", 130, "mu: interrupted (Ctrl-C); ")],
)
def test_interrupted_run_leaves_no_temp_folders(
    how: str, status: int, last: str, tmp_path: Path, png2y4m_binary: Path
) -> None:
    frames = tmp_path / "frames"
    write_frames(frames, 12, 32, 24, depth=8)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = start(tmp, frames, png2y4m_binary)
    try:
        lines = lines_of(proc)
        seen: list[str] = []
        wait_ready(lines, seen)
        assert any(tmp.iterdir()), "a running local run keeps its emulator's files in TMPDIR"
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C reaches the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=BOUND) == status
        output = rest(lines, seen)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    text = "\n".join(output)
    assert "Traceback" not in text
    assert output[-1].startswith(last), text
    assert sorted(p.name for p in tmp.iterdir()) == [], text
