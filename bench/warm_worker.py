"""What reusing the S3 client saves a worker invocation on a warm execution environment.

Each "invocation" here is what a png2y4m worker does with S3: through a new
:class:`mu.worker.s3.S3` (the invocation's view), download one object and upload one, then
close the view. Two ways, in one process, against moto's S3 served by a separate process
on 127.0.0.1 (so the server's CPU is not counted):

- ``warm``: the process's shared client, made once at Init (:func:`mu.worker.s3.warm_up`)
  and reused, as the worker does now;
- ``fresh``: a new client for every invocation (the shared clients dropped before each),
  as the worker did before.

Prints one JSON object (CPU and wall milliseconds per invocation, medians of ``--repeat``
batches of ``--count``), then a one-line summary.

    python3 bench/warm_worker.py [--count 50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVER = """
import sys
from emulator.s3 import S3Server
server = S3Server()
server.start()
print(server.endpoint_url, flush=True)
sys.stdin.read()
server.stop()
"""


def batch(count: int, fresh: bool, tmp: str) -> tuple[float, float]:
    from mu.worker import s3

    cpu = wall = 0.0
    for n in range(count):
        if fresh:
            with s3._clients_lock:
                s3._clients.clear()
        c0, w0 = time.process_time(), time.perf_counter()
        view = s3.S3("us-east-1")
        view.download("bench", "in", os.path.join(tmp, "in"))
        view.upload(os.path.join(tmp, "in"), "bench", f"out/{n}")
        view.close()
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
    return cpu / count * 1000, wall / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL_S3=url)
        import boto3

        from mu.worker import s3

        c0 = time.process_time()
        s3.warm_up()  # the first client of the process, as at Init
        init_ms = (time.process_time() - c0) * 1000
        setup = boto3.client("s3", region_name="us-east-1")
        setup.create_bucket(Bucket="bench")
        setup.put_object(Bucket="bench", Key="in", Body=os.urandom(64 * 1024))
        results: dict[str, list[tuple[float, float]]] = {"warm": [], "fresh": []}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeat):  # interleaved: drift hits both alike
                for mode in ("warm", "fresh"):
                    results[mode].append(batch(args.count, mode == "fresh", tmp))
        out = {
            "count": args.count, "repeat": args.repeat, "init_client_cpu_ms": round(init_ms, 1),
            **{f"{mode}_{what}_ms": round(statistics.median(r[i] for r in runs), 2)
               for mode, runs in results.items() for i, what in enumerate(("cpu", "wall"))},
        }
        print(json.dumps(out))
        print(f"per invocation: warm {out['warm_cpu_ms']} ms CPU / {out['warm_wall_ms']} ms wall, "
              f"fresh client {out['fresh_cpu_ms']} ms CPU / {out['fresh_wall_ms']} ms wall; "
              f"the client made at Init cost {out['init_client_cpu_ms']} ms CPU once")
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
