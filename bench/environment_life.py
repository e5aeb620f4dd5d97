"""One execution environment's life, copied: its CPU by phase, in forked children of a zygote.

Theory of operation
-------------------
This process does what the emulator's zygote does (:func:`emulator.environment._preload`,
then ``gc.freeze()``), then forks ``--n`` children one after the other. Each child becomes
what an environment is once ``awslambdaric`` has started it, without the sandbox and the
runtime client: the environment's variables, the working directory and ``sys.path[0]`` at
a task root holding the worker runtime as lambdaize bundles it (compiled, as the emulator
compiles a function's Python files when it unpacks its zip) and the static png2y4m binary.
It then imports the worker (``imports``), imports the handler module, which makes the S3
client (``init``), and serves one png2y4m invocation of two frames (``invoke``): a thread of
this process plays the coordinator over plain TCP (no TLS) and sends png2y4m's commands one
by one; S3 is moto's server in another process, holding two 320x180 frames. Each phase's CPU
(user + system) and minor page faults (mostly copy-on-write of the zygote's pages) come from
``getrusage`` in the child; ``children`` is the CPU of the processes it ran (the shells and
png2y4m). Medians over the children.

``--root`` takes the worker, the emulator's preload, the frames' maker and moto's wrapper
from another checkout of mu, so that two versions can be compared in turn.

Prints one JSON object, then a one-line summary.

    python bench/environment_life.py [--n 20] [--root PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from warm_worker import SERVER  # moto's S3 on loopback until stdin closes

ROOT = Path(__file__).resolve().parents[1]

SETUP = """
import compileall, json, os, pathlib, shutil, sys
import boto3
root, work, url, bucket = sys.argv[1:]
sys.path.insert(0, root)
from mu.frames import write_frames
from mu.lambdaize import handler_source, runtime_files
task = os.path.join(work, "task")
files = {"lambda_function.py": handler_source(), **runtime_files()}
for name, data in files.items():
    path = os.path.join(task, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pathlib.Path(path).write_bytes(data)
shutil.copy(os.path.join(root, "function", "png2y4m", "png2y4m"), task)
with open(os.path.join(task, "mu_command.json"), "w") as f:
    json.dump({"command": "./png2y4m -i -d -o ##OUTFILE## ##INFILE##"}, f)
compileall.compile_dir(task, quiet=1)
frames = pathlib.Path(work) / "frames"
write_frames(frames, 2, 320, 180)
s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=url)
s3.create_bucket(Bucket=bucket)
for n, path in enumerate(sorted(frames.iterdir()), 1):
    s3.put_object(Bucket=bucket, Key=f"in/{n:08d}.png", Body=path.read_bytes())
"""

BUCKET = "bench-environment-life"
COMMANDS = [
    "seti:nonblock:0", f"set:bucket:{BUCKET}", "set:cmdinfile:##TMPDIR##/%08d.png",
    "set:cmdoutfile:##TMPDIR##/0.y4m", "set:fromfile:##TMPDIR##/0.y4m", "set:outkey:out/0.y4m",
    *(c for n in (1, 2) for c in (f"set:inkey:in/{n:08d}.png",
                                  f"set:targfile:##TMPDIR##/{n:08d}.png", "retrieve:", "run:")),
    "upload:",
]


def frame(text: str) -> bytes:
    data = text.encode()
    return b"%012d " % len(data) + data


def coordinator(listener: socket.socket, bad: list[str]) -> None:
    """Serve each worker that connects: png2y4m's commands one by one, then quit."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            serve(conn, bad)


def serve(conn: socket.socket, bad: list[str]) -> None:
    buf = b""

    def reply() -> str:
        nonlocal buf
        while True:
            if len(buf) >= 13 and len(buf) >= 13 + int(buf[:12]):
                size = int(buf[:12])
                text, buf = buf[13:13 + size].decode(), buf[13 + size:]
                if not text.startswith("INFO"):
                    return text
                continue
            data = conn.recv(65536)
            if not data:
                return ""
            buf += data

    reply()  # the hello
    for command in COMMANDS:
        conn.sendall(frame(command))
        answer = reply()
        if not answer.startswith("OK"):
            bad.append(f"{command} -> {answer}")
    conn.sendall(frame("quit:"))


def usage() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt


def child(task: str, env: dict[str, str], port: int, out: int) -> None:
    """An environment's life (never returns)."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(task)
    sys.path.insert(0, task)
    t0 = usage()
    import mu.worker.session  # noqa: F401
    t1 = usage()
    import lambda_function  # type: ignore[import-not-found]

    t2 = usage()

    class Context:
        aws_request_id = "bench"

        def get_remaining_time_in_millis(self) -> int:
            return 60_000

    summary = lambda_function.lambda_handler(
        {"addr": "127.0.0.1", "port": port, "token": "bench", "bucket": BUCKET,
         "region": "us-east-1"}, Context())
    t3 = usage()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.write(out, json.dumps({
        "imports_ms": (t1[0] - t0[0]) * 1000, "init_ms": (t2[0] - t1[0]) * 1000,
        "invoke_ms": (t3[0] - t2[0]) * 1000, "children_ms": (kids.ru_utime + kids.ru_stime) * 1000,
        "faults_imports": t1[1] - t0[1], "faults_init": t2[1] - t1[1],
        "faults_invoke": t3[1] - t2[1], "exit": summary.get("exit"),
    }).encode())
    os._exit(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="environments, one after the other")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout of mu to use")
    args = parser.parse_args()
    root = args.root.resolve()
    subprocess.run(["make", "-s", "-C", str(root / "function" / "png2y4m")], check=True)
    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=root, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    work = tempfile.mkdtemp(prefix="mu-bench-environment-")
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL_S3": url, "AWS_LAMBDA_FUNCTION_NAME": "bench"}
        subprocess.run([sys.executable, "-c", SETUP, str(root), work, url, BUCKET], check=True,
                       env=dict(os.environ, **env))
        bad: list[str] = []
        threading.Thread(target=coordinator, args=(listener, bad), daemon=True).start()
        sys.path.insert(0, str(root))  # this process is the zygote: it imports no mu module
        from emulator import environment

        environment._preload()
        gc.collect()
        gc.freeze()
        lives: list[dict[str, Any]] = []
        for _ in range(args.n):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                try:
                    child(os.path.join(work, "task"), env, listener.getsockname()[1], write)
                finally:
                    os._exit(70)
            os.close(write)
            with os.fdopen(read, "rb") as pipe:
                data = pipe.read()
            os.waitpid(pid, 0)
            lives.append(json.loads(data))
    finally:
        listener.close()
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
        shutil.rmtree(work, ignore_errors=True)
    out: dict[str, Any] = {"n": args.n, "root": str(root),
                           "exits": sorted({str(life["exit"]) for life in lives}),
                           "coordinator_errors": bad[:5],
                           "load_average_1min": round(os.getloadavg()[0], 2)}
    for key in lives[0]:
        if key != "exit":
            out[key] = round(statistics.median(life[key] for life in lives), 2)
    out["total_ms"] = round(out["imports_ms"] + out["init_ms"] + out["invoke_ms"], 2)
    print(json.dumps(out))
    print(f"environment life, medians of {args.n}: imports {out['imports_ms']} ms, "
          f"init {out['init_ms']} ms, invocation {out['invoke_ms']} ms (total "
          f"{out['total_ms']} ms of CPU; {out['children_ms']} ms in its shells and png2y4m); "
          f"page faults {out['faults_imports']:.0f}/{out['faults_init']:.0f}/"
          f"{out['faults_invoke']:.0f}; exits {out['exits']}")
    return 0 if out["exits"] == ["quit"] and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
