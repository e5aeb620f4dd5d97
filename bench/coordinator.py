"""Coordinator throughput: messages per coordinator CPU-second, start-up CPU, peak RSS.

N simulated workers (bench/sim_workers.py, a separate process) each go through a
png2y4m-shaped conversation: hello, 7 setup commands, 6 x (set, set, retrieve, run), upload,
quit: 66 messages per worker. The coordinator runs in its own process so that its CPU time
(getrusage) and peak RSS are its own.

Before the first worker can come, the coordinator's process does what ``mu png2y4m`` does:
it imports the run path, parses the flags, loads the keys (``-c -s -k``, worker key pair),
and runs the png2y4m preflight against a moto S3 server (started here, holding the N x 6
input frames the run needs, plus as many again that it does not), then binds. That CPU,
from the process's start, is reported as ``startup_cpu_s``; the CPU of the run that follows
(the load) gives ``messages_per_cpu_s``, and the two together the whole process's rate
``messages_per_cpu_s_whole``. ``--no-inputs`` skips the S3 server and the preflight.
Prints one JSON object per configuration, then a summary line.

The start-up is its own figure, made robust against a busy machine: ``--startup-only``
runs only it (the coordinator process stops after binding, no load), ``--repeat K`` times
per configuration, and the summary gives the median and range over the K processes. One
discarded start-up before the measured ones makes sure no process pays for compiling
bytecode. The credentials come from the environment (``AWS_ACCESS_KEY_ID``, ...; the
shared files are pointed at nothing), resolved as ``--credentials`` says: ``plain``
(:class:`mu.aws.AwsSetup`: plain keys read without botocore), ``session`` (a boto3 session
resolves them) or ``static`` (the keys handed to the client, as for the local backend).

Usage: python bench/coordinator.py [--n 100,1000,2000,5000] [--tls on,off] [--quick]
       [--repeat K] [--startup-only] [--credentials plain|session|static]
       [--no-inputs | --s3-endpoint-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MESSAGES_PER_WORKER = 66
KEY_FILES = ("ca_cert", "server_cert", "server_key", "worker_cert", "worker_key")
BUCKET, VIDEO = "bench", "bench"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def child_environment(keydir: str) -> dict[str, str]:
    """The coordinator's environment: the bench's credentials, no AWS files of the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_CONFIG_FILE=os.path.join(keydir, "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=os.path.join(keydir, "no-aws-credentials"))
    return env


def run_s3(s3_url: str, credentials: str) -> Any:
    """The run's S3 client, with the credentials resolved as ``credentials`` says."""
    from mu.aws import lazy_s3

    if credentials == "static":
        return lazy_s3(s3_url, "us-east-1", CREDENTIALS)
    if credentials == "session":
        import boto3

        return lazy_s3(s3_url, "us-east-1", session=boto3.session.Session())
    from mu.aws import AwsSetup

    return AwsSetup().s3(s3_url, "us-east-1")


def serve(n: int, tls: bool, keydir: str, s3_url: str, credentials: str = "plain",
          startup_only: bool = False) -> None:
    """Child process: start as ``mu png2y4m`` does, run one coordinator, print figures."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import mu.cli  # (the command's own imports, as a user's run pays them)
    from backends import get_backend
    from mu.apps.png2y4m import ConfigState
    from mu.apps.png2y4m_run import Png2Y4MJob
    from mu.config import RunConfig
    from mu.coordinator import Coordinator
    from mu.runopts import load_keys, preflight
    from mu.states import MachineState

    class BenchConfig(ConfigState):
        """The png2y4m configuration plus one more setting: 7 setup commands."""

        def __init__(self, prevState: MachineState | None = None, *a: Any, **kw: Any) -> None:
            super().__init__(prevState, *a, **kw)
            self.commandlist = [*self.commandlist[:-1], "set:region:us-east-1", None]

    key = {name: os.path.join(keydir, f"{name}.pem") for name in KEY_FILES}
    job_options, options, where = mu.cli.parse_png2y4m([
        "--backend", "none", "-n", str(n), "-f", "6", "-v", VIDEO, "-b", BUCKET, "-t", "0",
        "-c", key["ca_cert"], "-s", key["server_cert"], "-k", key["server_key"],
        "--worker-cert", key["worker_cert"], "--worker-key", key["worker_key"],
        *(["--s3-endpoint-url", s3_url] if s3_url else []),
    ])
    job = Png2Y4MJob(job_options)
    cfg = job.config
    if s3_url:
        site = get_backend("none", where)
        s3 = run_s3(s3_url, credentials)  # as the none site makes it, with --credentials
        problems, keys = preflight(job, options, site, s3, list(range(n)))
        if problems:
            raise SystemExit(f"preflight: {problems}")
    else:
        keys = load_keys(options)
    config = RunConfig(num_actors=n, port=0, tls=tls, handshake_timeout=120, hello_timeout=120)
    coord = Coordinator(BenchConfig, cfg, config, keys if tls else None)
    host, port = coord.bind()
    before = resource.getrusage(resource.RUSAGE_SELF)  # start-up: everything until now
    startup = before.ru_utime + before.ru_stime
    print(json.dumps({"host": host, "port": port, "token": coord.token, "startup": startup}),
          flush=True)
    if startup_only:
        coord.close()
        return
    if os.environ.get("MU_BENCH_PROFILE"):  # write cProfile stats of the coordinator there
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(coord.run)
        profiler.dump_stats(os.environ["MU_BENCH_PROFILE"])
    else:
        result = coord.run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(json.dumps({
        "done": result.done, "errors": result.errors, "rejected": result.rejected,
        "messages": result.messages_in + result.messages_out, "cpu": user + system,
        "user": user, "system": system, "wall": result.wall,
        "startup": before.ru_utime + before.ru_stime,
        "peak_rss_mib": after.ru_maxrss / 1024,
    }), flush=True)


def fill_inputs(s3_url: str, frames: int) -> None:
    """Put ``2 * frames`` tiny input frames: the run needs the first half."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **CREDENTIALS)
    s3.create_bucket(Bucket=BUCKET)

    def put(frame: int) -> None:
        s3.put_object(Bucket=BUCKET, Key=f"{VIDEO}-png16/{frame:08d}.png", Body=b"x")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(1, 2 * frames + 1)))


def measure(n: int, tls: bool, keydir: str, s3_url: str, credentials: str = "plain",
            startup_only: bool = False) -> dict[str, Any]:
    coord = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(n), "on" if tls else "off", keydir, s3_url,
         credentials, "startup" if startup_only else "run"],
        stdout=subprocess.PIPE, text=True, env=child_environment(keydir),
    )
    assert coord.stdout is not None
    where = json.loads(coord.stdout.readline())
    common = {
        "workers": n, "tls": tls, "startup_cpu_s": round(where["startup"], 3),
        "startup_preflight": bool(s3_url), "credentials": credentials,
    }
    if startup_only:
        ok = coord.wait() == 0
        return {**common, "ok": ok, "load_average_1min": round(os.getloadavg()[0], 1)}
    sim_args = [sys.executable, str(HERE / "sim_workers.py"), where["host"], str(where["port"]),
                where["token"], str(n)] + ([keydir] if tls else [])
    started = time.monotonic()
    sim = subprocess.run(sim_args, capture_output=True, text=True, check=False)
    figures = json.loads(coord.stdout.readline())
    coord.wait()
    wall = time.monotonic() - started
    whole = figures["cpu"] + figures["startup"]
    return {
        **common, "ok": figures["done"] == n and sim.returncode == 0,
        "messages": figures["messages"], "expected_messages": n * MESSAGES_PER_WORKER,
        "coordinator_cpu_s": round(figures["cpu"], 3),
        "coordinator_user_s": round(figures["user"], 3),
        "coordinator_system_s": round(figures["system"], 3),
        "messages_per_cpu_s": round(figures["messages"] / figures["cpu"]) if figures["cpu"] else None,
        "messages_per_cpu_s_whole": round(figures["messages"] / whole) if whole else None,
        "wall_s": round(wall, 3), "peak_rss_mib": round(figures["peak_rss_mib"], 1),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }


def startup_summary(rows: list[dict[str, Any]]) -> str:
    """Median and range of the start-up CPU per configuration, over its repeats."""
    import statistics

    groups: dict[tuple[int, bool], list[float]] = {}
    for r in rows:
        groups.setdefault((r["workers"], r["tls"]), []).append(r["startup_cpu_s"])
    how = "without the preflight"
    if rows and rows[0]["startup_preflight"]:
        how = f"with the preflight, credentials {rows[0]['credentials']}"
    return "; ".join(
        f"N={n} {'TLS' if tls else 'TCP'}: {statistics.median(v):.3f} CPU-s median "
        f"({min(v):.3f}-{max(v):.3f}, {len(v)} processes)"
        for (n, tls), v in groups.items()
    ) + f" ({how})"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3] == "on", sys.argv[4], sys.argv[5], sys.argv[6],
              sys.argv[7] == "startup")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100,1000,2000,5000")
    parser.add_argument("--tls", default="on,off")
    parser.add_argument("--quick", action="store_true", help="N = 100 only")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (1)")
    parser.add_argument("--no-inputs", action="store_true",
                        help="no S3 server and no preflight in the start-up")
    parser.add_argument("--s3-endpoint-url", default="",
                        help=f"an S3 whose bucket {BUCKET!r} already holds the inputs "
                        "(instead of starting and filling one)")
    parser.add_argument("--startup-only", action="store_true",
                        help="measure only the start-up (no workers, no load)")
    parser.add_argument("--credentials", choices=("plain", "session", "static"), default="plain",
                        help="how the coordinator resolves its AWS credentials (plain)")
    args = parser.parse_args()
    sizes = [100] if args.quick else [int(x) for x in args.n.split(",")]
    modes = [m == "on" for m in args.tls.split(",")]
    from mu.tls import generate_keys

    rows = []
    with contextlib.ExitStack() as stack:
        s3_url = args.s3_endpoint_url
        if not args.no_inputs and not s3_url:
            # bench/emulator.py, beside this script, would shadow the emulator package.
            sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
            from emulator.s3 import S3Server

            server = S3Server()
            server.start()
            stack.callback(server.stop)
            s3_url = server.endpoint_url
            fill_inputs(s3_url, 6 * max(sizes))
        keydir = stack.enter_context(tempfile.TemporaryDirectory())
        generate_keys().write(keydir)
        measure(sizes[0], modes[0], keydir, s3_url, args.credentials, True)  # warm-up
        for _ in range(args.repeat):
            for tls in modes:
                for n in sizes:
                    row = measure(n, tls, keydir, s3_url, args.credentials, args.startup_only)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.startup_only:
        print(f"coordinator start-up: {startup_summary(rows)}")
        return 0 if all(r["ok"] for r in rows) else 1
    summary = "; ".join(
        f"N={r['workers']} {'TLS' if r['tls'] else 'TCP'}: {r['messages_per_cpu_s']} msg/CPU-s "
        f"(whole process {r['messages_per_cpu_s_whole']}), start-up {r['startup_cpu_s']} "
        f"CPU-s, {r['wall_s']} s, {r['peak_rss_mib']} MiB, load {r['load_average_1min']}"
        f"{'' if r['ok'] else ' (INCOMPLETE)'}"
        for r in rows
    )
    print(f"coordinator: {summary}")
    print(f"coordinator start-up: {startup_summary(rows)}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
