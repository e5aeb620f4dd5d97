"""``mu png2y4m``: flags, preflight, the coordinated run, and the outputs.

Theory of operation
-------------------
The composition root (``mu.cli``) builds the launcher for ``--backend`` and an S3 client
pointed where that backend's S3 is, and hands both to :func:`run`. Everything else is the
same for every backend:

1. **Stage** (local backend only): lambdaize ``--binary`` into a private temp dir and
   register it with the emulator (unchanged bundles are recognised by their CodeSha256),
   and create the bucket if it is missing.
2. **Inputs**: ``--input-dir`` uploads local PNGs as frames 1, 2, ... of the input prefix.
3. **Resume** (``--resume``): chunks whose output already exists complete (size and SHA-256
   as recorded at upload, :mod:`mu.integrity`) are left alone; only the rest run.
4. **Preflight**: every problem that can be seen before launching is collected and reported
   at once (keys unreadable, bucket or frames missing, function not deployed, no AWS
   credentials or an unknown ``AWS_PROFILE``, an endpoint that cannot be reached, a Lambda
   host that does not resolve, and whatever stopped steps 1-3); any problem means exit
   status 2 and nothing launched.
5. **Run**: the coordinator launches the workers and drives each through the job's states,
   writing the run record (``-O``) and showing live progress.
6. **Outputs**: ``--output-dir`` downloads every chunk that was produced. Finished outputs
   stay in S3 whatever happened to the other chunks.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mu.apps.png2y4m import (
    COMMAND,
    ConfigState,
    Png2Y4MConfig,
    bucket_exists,
    download_outputs,
    finished_chunks,
    preflight_inputs,
    upload_inputs,
)
from mu.errors import ConfigError, MuError
from mu.launch import Launcher

__all__ = ["DEFAULT_BINARY", "Outcome", "add_arguments", "config_from_args", "run"]

DEFAULT_BINARY = Path(__file__).resolve().parents[2] / "function" / "png2y4m" / "png2y4m"
"""The binary built by ``make -C function/png2y4m`` in a source checkout."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The 2016 ``png2y4m_server.py`` flags (same letters and defaults), plus mu's own."""
    from mu.runopts import add_run_arguments

    job = parser.add_argument_group("job")
    job.add_argument("-n", "--workers", type=int, default=1, help="number of workers/chunks (1)")
    job.add_argument("-f", "--frames", type=int, default=6, help="frames per chunk (6)")
    job.add_argument("-o", "--offset", type=int, default=0, help="skip this many chunks (0)")
    job.add_argument("-v", "--video", default="sintel-1k", help="video name ('sintel-1k')")
    job.add_argument(
        "-b", "--bucket", default="excamera-us-east-1", help="S3 bucket ('excamera-us-east-1')"
    )
    job.add_argument(
        "-i", "--informat", default="png16", help="input format, the key infix ('png16')"
    )
    job.add_argument("-l", "--function", default="png2y4m", help="Lambda function ('png2y4m')")
    job.add_argument(
        "-r", "--regions", default="us-east-1", help="comma-separated regions ('us-east-1')"
    )
    where = parser.add_argument_group("where it runs")
    where.add_argument(
        "--backend",
        choices=("local", "lambda", "none"),
        default="local",
        help="local: embedded emulator + S3 (default); lambda: AWS; none: launch nothing, "
        "write the payload (--payload-out), print how to start workers by hand with it and "
        "wait for them (--arrival-timeout)",
    )
    where.add_argument("--endpoint-url", help="a Lambda-compatible endpoint (e.g. a running "
                       "`mu emulator`)")
    where.add_argument(
        "--s3-endpoint-url",
        help="S3 endpoint instead of AWS's (with --backend lambda beside --endpoint-url; with "
        "--backend none, where the workers find S3 too)",
    )
    where.add_argument(
        "--host-addr",
        help="address workers dial back to (AWS default: the local address that routes to "
        "the region's Lambda endpoint; local: 127.0.0.1)",
    )
    files = parser.add_argument_group("files")
    files.add_argument("--input-dir", help="upload DIR/*.png as the input frames first")
    files.add_argument("--output-dir", help="download every output chunk here after the run")
    files.add_argument(
        "--binary",
        default=str(DEFAULT_BINARY),
        help="local backend: the png2y4m binary to lambdaize; none: the one a worker started "
        "from a checkout runs (default: the one built from function/png2y4m)",
    )
    add_run_arguments(parser)


def config_from_args(args: argparse.Namespace) -> Png2Y4MConfig:
    """The job configuration from the parsed flags (ConfigError names a bad value)."""
    if args.workers < 1:
        raise ConfigError(f"-n/--workers must be >= 1, got {args.workers}")
    if args.offset < 0:
        raise ConfigError(f"-o/--offset must be >= 0, got {args.offset}")
    return Png2Y4MConfig(
        video=args.video, bucket=args.bucket, informat=args.informat, frames=args.frames
    )


def regions_of(args: argparse.Namespace) -> tuple[str, ...]:
    regions = tuple(dict.fromkeys(r.strip() for r in args.regions.split(",") if r.strip()))
    if not regions:
        raise ConfigError("-r/--regions names no region")
    return regions


@dataclass
class Outcome:
    """What a png2y4m run produced."""

    exit_status: int
    result: Any = None  # mu.coordinator.RunResult, when the run started
    outputs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def stage_local(
    args: argparse.Namespace, launcher: Launcher, s3: Any, cfg: Png2Y4MConfig
) -> None:
    """Local backend: deploy the binary to the emulator and make sure the bucket exists."""
    from mu.lambdaize import LambdaizeOptions, lambdaize

    binary = Path(args.binary)
    if not binary.is_file():
        raise ConfigError(
            f"png2y4m binary {str(binary)!r} not found (build it with "
            "`make -C function/png2y4m`, or pass --binary)"
        )
    with tempfile.TemporaryDirectory(prefix="mu-bundle-") as tmp:
        lambdaize(
            LambdaizeOptions(
                executable=str(binary),
                post_args=COMMAND,
                name=args.function,
                regions=regions_of(args),
                out_dir=tmp,
            ),
            launcher,
        )
    if not bucket_exists(s3, cfg.bucket):
        s3.create_bucket(Bucket=cfg.bucket)


def preflight(
    args: argparse.Namespace,
    launcher: Launcher | None,
    s3: Any,
    cfg: Png2Y4MConfig,
    chunks: list[int],
    setup: Sequence[str] = (),
) -> tuple[list[str], Any]:
    """Collect every problem visible before launch. Returns (problems, keys or None).

    ``setup`` holds what the composition root found while building the backend (an unknown
    AWS_PROFILE, no credentials, a Lambda host that does not resolve); without an S3 client
    or a launcher the checks that need them are skipped.
    """
    from mu.runopts import keys_from_args

    problems: list[str] = list(setup)
    keys = None
    try:
        keys = keys_from_args(args)
    except ConfigError as exc:
        problems.append(str(exc))
    if s3 is None or launcher is None:
        return problems, keys  # nothing below can be checked without them
    try:
        problems.extend(preflight_inputs(s3, cfg, chunks))
    except MuError as exc:
        problems.append(str(exc))
    if args.backend != "none":
        for region in regions_of(args):
            try:
                found = launcher.function_exists(args.function, region)
            except MuError as exc:
                problems.append(str(exc))
                continue
            if not found:
                problems.append(
                    f"function {args.function!r} not found in {region} "
                    "(deploy it with `mu lambdaize`, or pass -l)"
                )
    return problems, keys


def run(
    args: argparse.Namespace,
    launcher: Launcher | None,
    s3: Any,
    host_addr: str,
    out: Any = None,
    problems: Sequence[str] = (),
) -> Outcome:
    """Run the png2y4m job end to end (see the module docstring).

    Args:
        args: parsed flags (:func:`add_arguments`).
        launcher: the backend, built by the caller (None: it could not be built).
        s3: a boto3 S3 client for the backend's S3 (None: it could not be made).
        host_addr: the address workers dial back to.
        out: where the report goes (default stderr).
        problems: what the caller found wrong while building the backend; reported by
            preflight with its own, before anything is staged or uploaded.

    Returns:
        The outcome; ``exit_status`` is 0 only if every chunk was converted.
    """
    from mu.coordinator import Coordinator
    from mu.runopts import execute, run_config_from_args

    out = out or sys.stderr
    cfg = config_from_args(args)
    run_config = run_config_from_args(args, num_actors=args.workers, offset=args.offset)
    chunks = list(run_config.actor_numbers())
    if problems:
        found, _keys = preflight(args, launcher, s3, cfg, chunks, problems)
        return _report(found, out)
    assert launcher is not None
    try:
        todo = _prepare(args, launcher, s3, cfg, chunks, out)
    except MuError as exc:  # S3 or the emulator unreachable, a bucket that cannot be made...
        found, _keys = preflight(args, None, None, cfg, chunks, [str(exc)])
        return _report(found, out)
    if not todo:
        done = download_outputs(s3, cfg, chunks, args.output_dir) if args.output_dir else []
        return Outcome(0, outputs=done)
    if todo != chunks:
        run_config = dataclasses.replace(run_config, actors=todo)
    found, keys = preflight(args, launcher, s3, cfg, todo)
    if found:
        return _report(found, out)
    regions = regions_of(args)
    coordinator = Coordinator(
        ConfigState,
        cfg,
        run_config,
        keys,
        launcher=launcher,
        function_name=args.function,
        regions=regions,
        payload_fields={"bucket": cfg.bucket, "region": regions[0]},
        host_addr=host_addr,
    )
    result = execute(coordinator, args, out)
    duplicated = getattr(launcher, "duplicated", 0)
    if duplicated:
        print(f"mu: fault: {duplicated} Event invocation(s) were delivered twice", file=out)
    outputs: list[str] = []
    if args.output_dir:
        outputs = download_outputs(s3, cfg, chunks, args.output_dir)
        print(f"downloaded {len(outputs)} of {len(chunks)} chunks to {args.output_dir}/", file=out)
    return Outcome(result.exit_status, result=result, outputs=outputs)


def _prepare(
    args: argparse.Namespace, launcher: Launcher, s3: Any, cfg: Png2Y4MConfig,
    chunks: list[int], out: Any,
) -> list[int]:
    """Stage (local backend), upload ``--input-dir``, and with ``--resume`` find the chunks
    already complete; returns the chunks still to run."""
    if args.backend == "local":
        stage_local(args, launcher, s3, cfg)
    if args.input_dir:
        count = upload_inputs(s3, cfg, args.input_dir, create_bucket=args.backend == "local")
        print(f"uploaded {count} frames to s3://{cfg.bucket}/{cfg.input_prefix}", file=out)
    if not args.resume:
        return chunks
    finished = set(finished_chunks(s3, cfg, chunks))
    todo = [c for c in chunks if c not in finished]
    print(f"--resume: {len(finished)} of {len(chunks)} chunks are already complete; "
          f"{len(todo)} to run", file=out)
    return todo


def _report(problems: list[str], out: Any) -> Outcome:
    """Print preflight's one report; exit status 2, nothing launched."""
    print("mu: preflight found problems; nothing was launched:", file=out)
    for problem in problems:
        print(f"  - {problem}", file=out)
    return Outcome(2, problems=problems)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``mu png2y4m`` flags outside the CLI (used by ``mu demo`` and tests)."""
    parser = argparse.ArgumentParser(prog="mu png2y4m")
    add_arguments(parser)
    return parser.parse_args(list(argv))
