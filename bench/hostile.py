"""A local png2y4m run with strangers holding the coordinator's port, against one without.

The real ``mu png2y4m`` command (local backend: emulator, moto S3, real workers, mutual TLS,
the static binary) converts ``--workers`` x ``--frames`` small frames. In the *hostile*
runs a crowd in this process holds ``--idle`` TCP connections that never send a byte and
``--slow`` slow-loris connections that send a real TLS ClientHello one byte a second, on the
coordinator's port, for the whole run; a connection the coordinator drops is opened again at
once. Quiet and hostile runs alternate (the machine is shared and noisy). The run time is
the coordinator's own (the last actor's end in the run record, ``-O``); the command's wall
time, which adds the emulator's start-up, is reported too.

Prints one JSON object, then a summary line (each run's figures go to stderr as they come).
``MU_BENCH_KEEP=DIR`` keeps the runs' logs and records in DIR.

    python bench/hostile.py [--workers 20] [--frames 2] [--idle 2000] [--slow 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "function" / "png2y4m" / "png2y4m"


def client_hello() -> bytes:
    """A real TLS ClientHello (what a scanner sends first)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class Crowd(threading.Thread):
    """Hold ``idle`` + ``slow`` connections on ``port`` until :meth:`stop`; reopen drops."""

    def __init__(self, port: int, idle: int, slow: int) -> None:
        super().__init__(name="crowd", daemon=True)
        self.port = port
        self.kinds = ["idle"] * idle + ["slow"] * slow
        self.hello = client_hello()
        self.opened = 0
        self.dropped = 0
        self.refused = 0
        self.peak = 0
        self._stop_event = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sent: dict[socket.socket, int] = {}

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def _open(self, kind: str) -> bool:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            self.refused += 1
            return False
        sock.setblocking(False)
        self._sent[sock] = 0
        self._sel.register(sock, selectors.EVENT_READ, kind)
        self.opened += 1
        return True

    def run(self) -> None:
        waiting = list(self.kinds)
        next_byte = time.monotonic()
        while not self._stop_event.is_set():
            while waiting and not self._stop_event.is_set():  # (re)open what was dropped
                if not self._open(waiting[-1]):
                    self._stop_event.wait(0.01)  # not listening yet, or just closed
                    break
                waiting.pop()
            self.peak = max(self.peak, len(self._sent))
            for key, _ in self._sel.select(timeout=0.05):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if sock.recv(65536):
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self._sel.unregister(sock)
                del self._sent[sock]
                sock.close()
                self.dropped += 1
                waiting.append(key.data)
            if time.monotonic() >= next_byte:  # slow-loris: one byte a second each
                next_byte += 1.0
                for key in list(self._sel.get_map().values()):
                    if key.data == "slow":
                        sock = key.fileobj  # type: ignore[assignment]
                        sent = self._sent[sock]
                        with contextlib.suppress(OSError):
                            self._sent[sock] += sock.send(self.hello[sent:sent + 1])


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def one_run(args: argparse.Namespace, frames: Path, work: Path, hostile: bool,
            n: int) -> dict[str, Any]:
    port = free_port()
    record = work / f"run{n}.jsonl"
    argv = [sys.executable, "-m", "mu.cli", "png2y4m", "-t", str(port), "--binary", str(BINARY),
            "-n", str(args.workers), "-f", str(args.frames), "-v", "hostile", "-b",
            f"bench-hostile-{n}", "--input-dir", str(frames), "-O", str(record)]
    crowd = Crowd(port, args.idle, args.slow) if hostile else None
    start = time.monotonic()
    with open(work / f"run{n}.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        if crowd is not None:
            crowd.start()
        try:
            status = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if crowd is not None:
                crowd.stop()
    wall = time.monotonic() - start
    rows = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() \
        else []
    final = {r["actor"]: r for r in rows if r["ok"]}
    run = max((t for r in rows for t, _ in r["timestamps"]), default=float("nan"))
    out: dict[str, Any] = {
        "hostile": hostile, "exit": status, "actors_done": len(final),
        "attempts": len(rows), "run_s": round(run, 3), "command_s": round(wall, 3),
    }
    if crowd is not None:
        out.update(crowd_opened=crowd.opened, crowd_dropped=crowd.dropped,
                   crowd_peak=crowd.peak)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the crowd and the coordinator
    subprocess.run(["make", "-s", "-C", str(BINARY.parent)], check=True)
    sys.path.insert(0, str(ROOT))
    from mu.frames import write_frames

    runs: list[dict[str, Any]] = []
    keep = os.environ.get("MU_BENCH_KEEP")  # a directory to keep the logs in
    with tempfile.TemporaryDirectory(prefix="mu-bench-hostile-") as tmp:
        work = Path(keep or tmp)
        frames = work / "frames"
        write_frames(frames, args.workers * args.frames, 64, 48)
        for _ in range(args.repeat):
            for hostile in (False, True):
                runs.append(one_run(args, frames, work, hostile, len(runs)))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    quiet = [r["run_s"] for r in runs if not r["hostile"]]
    loud = [r["run_s"] for r in runs if r["hostile"]]
    result = {
        "workers": args.workers, "frames": args.frames, "idle": args.idle, "slow": args.slow,
        "runs": runs,
        "all_done": all(r["exit"] == 0 and r["actors_done"] == args.workers for r in runs),
        "median_run_s": {"quiet": statistics.median(quiet), "hostile": statistics.median(loud)},
        "median_delay_s": round(statistics.median(loud) - statistics.median(quiet), 3),
        "max_delay_s": round(max(loud) - min(quiet), 3),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result))
    print(f"hostile: {args.workers} workers, {args.idle} idle + {args.slow} slow-loris held: "
          f"all done {result['all_done']}; run {statistics.median(quiet):.2f} s quiet, "
          f"{statistics.median(loud):.2f} s hostile (median of {args.repeat}), delay "
          f"{result['median_delay_s']:+.2f} s (worst {result['max_delay_s']:+.2f} s)")
    return 0 if result["all_done"] else 1


if __name__ == "__main__":
    sys.exit(main())
