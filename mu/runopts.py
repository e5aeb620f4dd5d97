"""The typed run path: one entry, :func:`run`, for every job on every site.

Theory of operation
-------------------
The composition root (``mu.cli``, or :func:`mu.run_job` in the library) parses what the
user asked for into :mod:`mu.options` and builds a :class:`~mu.launch.Site`; then
``run(job, options, site)`` does the rest, the same for every job and every backend:

1. **Site**: what the site found wrong with its credentials, and the address workers dial
   back to (a Lambda host that does not resolve is a problem, reported with the others).
2. **Stage** (a site that ``deploys_jobs``, the local one): the job deploys its function
   there (:meth:`Job.deploy`), and the bucket is made if it is missing.
3. **Inputs**: the job uploads its input directory, if it has one.
4. **Resume** (``--resume``): actors whose output already exists complete are left alone.
5. **Preflight**: every problem that can be seen before launching is collected and reported
   at once (keys unreadable, bucket or inputs missing, function not deployed, no
   credentials, an endpoint that cannot be reached, and whatever stopped steps 1-4); any
   problem means exit status 2 and nothing launched.
6. **Run**: a :class:`~mu.coordinator.Coordinator` launches the workers through the site's
   launcher and drives each through the job's states (:func:`execute`: the live view, the
   run record ``-O``, profiling ``-P`` and the final report). A job whose workers talk to
   each other (``needs_relay = True``) gets a :class:`~mu.relay.Relay` beside the
   coordinator, in a process of its own (:class:`~mu.relay_process.RelayProcess`: the
   relayed bytes' TLS work never holds the coordinator's interpreter lock): same listen
   host and keys, the coordinator's token as its run token,
   ``--relay-port``, its ``host:port`` in the payload field ``relay``; a port it cannot
   bind is a preflight problem; it stops after the run and its statistics are printed in
   one line and kept in :attr:`RunResult.relay`.
7. **Outputs**: the job downloads what was produced, whatever happened to the rest.

A job is anything with the members of :class:`Job` (:class:`mu.apps.png2y4m_run.Png2Y4MJob`,
:class:`mu.apps.custom.StateJob`). :func:`load_keys` turns the key options into a
:class:`~mu.tls.KeySet`, :func:`run_config` the run options into a
:class:`~mu.config.RunConfig` (the listen address and handshake bound default to the
site's). Nothing here sees ``argparse``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from mu.config import RunConfig
from mu.errors import ConfigError, MuError
from mu.launch import FunctionSettings, Launcher, Site
from mu.options import RunOptions

REPORT_WAIT = 5.0
"""Seconds the bill waits at the end of a run for REPORT lines still on their way."""
LOG_CLOCK_SLACK_MS = 60_000
"""The bill reads REPORT lines from this long before the run started: log clocks may
differ a little from this machine's."""

if TYPE_CHECKING:  # the coordinator and TLS (pyOpenSSL) load only when a run starts
    from mu.coordinator import Coordinator
    from mu.coordinator import RunResult as CoordinatorResult
    from mu.relay_core import RelayStats
    from mu.states import MachineState
    from mu.tls import KeySet

__all__ = [
    "Job", "RunResult", "dry_run", "execute", "load_keys", "preflight", "price_record", "run",
    "run_config",
]


class Job(Protocol):
    """What :func:`run` needs from a job.

    Attributes:
        first_state: the state class that receives each worker's hello.
        config: the job's frozen configuration, handed to every state.
        function: the function the workers run in.
        bucket: the S3 bucket the workers use (in their payload).
        workers: how many actors.
        offset: the first actor number.
    """

    @property
    def first_state(self) -> Callable[..., MachineState]: ...
    @property
    def config(self) -> Any: ...
    @property
    def function(self) -> str: ...
    @property
    def bucket(self) -> str: ...
    @property
    def workers(self) -> int: ...
    @property
    def offset(self) -> int: ...

    def deploy(self, launcher: Launcher, regions: Sequence[str], role: str) -> None:
        """Deploy the job's function on a site that ``deploys_jobs`` (the local one), with
        the site's default execution ``role``."""
        ...

    def upload_inputs(self, s3: Any, create_bucket: bool, out: TextIO) -> None:
        """Upload the job's input files, if it has any (saying what on ``out``)."""
        ...

    def preflight(self, s3: Any, actors: list[int]) -> list[str]:
        """What is missing in S3 for these actors (inputs, bucket), one line each."""
        ...

    def finished(self, s3: Any, actors: list[int]) -> list[int]:
        """The actors whose output already exists complete (``--resume``)."""
        ...

    def download_outputs(self, s3: Any, actors: list[int], out: TextIO) -> list[str]:
        """Download what the actors produced, if the job was asked to; the local paths."""
        ...


@dataclass(frozen=True)
class RunResult:
    """What a run did.

    Attributes:
        exit_status: 0 only if every actor finished; 2 when preflight found problems.
        run: the coordinator's account of the run (None: nothing was launched).
        outputs: the files downloaded.
        problems: what preflight found (then nothing was launched).
        relay: the statistics of the relay beside the coordinator (a job that
            ``needs_relay``), taken when it stopped after the run; else None.
    """

    exit_status: int
    run: CoordinatorResult | None = None
    outputs: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    relay: RelayStats | None = None


def load_keys(options: RunOptions, environ: Mapping[str, str] = os.environ) -> KeySet | None:
    """The run's keys: from flags, else the 2016 environment variables, else ephemeral.

    Given the coordinator's identity (``-c/-s/-k``) without a worker pair, the workers get
    ``worker_cert.pem``/``worker_key.pem`` found beside the server certificate (where
    ``mu genkeys`` writes them), else a certificate minted for this run from ``ca_key.pem``
    beside the CA certificate; the coordinator's own key never serves as theirs.

    Returns None without TLS (``--no-tls``).

    Raises:
        ConfigError: a key file is missing or unreadable, only some were given, or there
            is no worker pair and no CA key to make one.
    """
    if not options.tls:
        return None
    files = options.keys
    ca = files.ca_cert or environ.get("CA_CERT")
    cert = files.server_cert or environ.get("SRV_CERT")
    key = files.server_key or environ.get("SRV_KEY")
    wcert = files.worker_cert or environ.get("WORKER_CERT")
    wkey = files.worker_key or environ.get("WORKER_KEY")
    given = {"-c/CA_CERT": ca, "-s/SRV_CERT": cert, "-k/SRV_KEY": key}
    if not any(given.values()):
        from mu.tls import generate_keys

        return generate_keys(days=2)
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ConfigError(f"keys given in part: also give {', '.join(missing)}")
    assert ca and cert and key
    from mu.tls import KEY_FILES, KeySet, mint_worker

    if bool(wcert) != bool(wkey):
        raise ConfigError("give both --worker-cert and --worker-key (WORKER_CERT/WORKER_KEY), "
                          "or neither")
    if wcert:
        return KeySet.load(ca, cert, key, wcert, wkey)
    keys = KeySet.load(ca, cert, key)  # names every unreadable file before anything else
    beside = Path(cert).parent
    found = beside / KEY_FILES["worker_cert"], beside / KEY_FILES["worker_key"]
    if all(p.is_file() for p in found):
        return KeySet.load(ca, cert, key, *found)
    ca_key = Path(ca).parent / KEY_FILES["ca_key"]
    if not ca_key.is_file():
        raise ConfigError(
            f"no worker certificate for the payload (the coordinator's key never goes "
            f"into it): found neither {found[0]} + {found[1].name} beside the server "
            f"certificate nor {ca_key} to make one; pass --worker-cert/--worker-key "
            f"(WORKER_CERT/WORKER_KEY), or make all six key files with `mu genkeys`"
        )
    try:
        ca_key_pem = ca_key.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read CA key {str(ca_key)!r}: {exc.strerror}") from exc
    worker_cert, worker_key = mint_worker(keys.ca_cert, ca_key_pem)
    return dataclasses.replace(keys, worker_cert=worker_cert, worker_key=worker_key)


def run_config(options: RunOptions, site: Site, num_actors: int, offset: int) -> RunConfig:
    """The RunConfig the options describe; the listen address and the handshake bound are
    the site's unless given."""
    return RunConfig(
        num_actors=num_actors,
        offset=offset,
        actors=options.actors,
        extra_workers=options.extra,
        host=options.host or site.listen_host,
        port=options.port,
        worker_deadline=options.deadline,
        run_deadline=options.run_deadline,
        tls=options.tls,
        retries=options.retries,
        arrival_timeout=options.arrival_timeout,
        faults=options.faults,
        speculate=options.speculate,
        max_handshakes=options.max_handshakes or site.max_handshakes,
    )


def run(job: Job, options: RunOptions, site: Site, out: TextIO | None = None) -> RunResult:
    """Run ``job`` on ``site`` end to end (see the module docstring).

    Args:
        job: what the workers do, and its inputs and outputs.
        options: how the coordinator runs.
        site: where (its launcher, S3, dial-back address); the caller closes it.
        out: where progress and the report go (default stderr).

    Returns:
        the outcome; ``exit_status`` is 0 only if every actor finished.
    """
    from mu.coordinator import Coordinator

    if options.dry_run:
        return dry_run(job, options, site, out)  # the plan goes to stdout unless told
    out = out or sys.stderr
    config = run_config(options, site, num_actors=job.workers, offset=job.offset)
    actors = list(config.actor_numbers())
    region = site.regions[0]
    setup = site.check_credentials()
    usable = not setup
    s3 = site.s3_client(region) if usable else None
    host_addr = None
    if usable:
        try:
            host_addr = site.dial_back_address(region)
        except ConfigError as exc:
            setup.append(str(exc))
    if setup:
        found, _keys = preflight(job, options, site if usable else None, s3, actors, setup)
        return _report(found, out)
    try:
        todo = _prepare(job, options, site, s3, actors, out)
    except MuError as exc:  # S3 or the emulator unreachable, a bucket that cannot be made...
        found, _keys = preflight(job, options, None, None, actors, [str(exc)])
        return _report(found, out)
    if not todo:
        return RunResult(0, outputs=tuple(job.download_outputs(s3, actors, out)))
    if todo != actors:
        config = dataclasses.replace(config, actors=todo)
    found, keys = preflight(job, options, site, s3, todo)
    if found:
        return _report(found, out)
    coordinator = Coordinator(
        job.first_state,
        job.config,
        config,
        keys,
        launcher=site.launcher,
        function_name=job.function,
        regions=site.regions,
        payload_fields={"bucket": job.bucket, "region": region},
        host_addr=host_addr,
    )
    relay = None
    if getattr(job, "needs_relay", False):
        from mu.relay_process import RelayProcess

        relay = RelayProcess(coordinator.keys if config.tls else None, coordinator.token,
                             config.host, options.relay_port)
        try:
            relay.start()
        except MuError as exc:  # taken since the preflight looked, or it did not start
            return _report([str(exc)], out)
        coordinator.payload_fields["relay"] = f"{host_addr or config.host}:{relay.address[1]}"
    started_ms = int(time.time() * 1000)
    try:
        result = execute(coordinator, options, out,
                         bill=lambda r: _bill(r, job, options, site, started_ms))
    finally:
        if relay is not None:
            relay.stop()
    relay_stats = None
    if relay is not None:
        relay_stats = relay.stats()
        if relay.error is not None:
            print(f"mu: relay: stopped during the run: {relay.error}", file=out)
        print(f"mu: relay: {relay_stats.line()}", file=out)
    duplicated = site.duplicated()
    if duplicated:
        print(f"mu: fault: {duplicated} Event invocation(s) were delivered twice", file=out)
    outputs = job.download_outputs(s3, actors, out)
    return RunResult(result.exit_status, run=result, outputs=tuple(outputs), relay=relay_stats)


def _prepare(
    job: Job, options: RunOptions, site: Site, s3: Any, actors: list[int], out: TextIO
) -> list[int]:
    """Stage (a site that deploys jobs), upload the inputs, and with ``--resume`` find the
    actors already complete; returns the actors still to run."""
    if site.deploys_jobs:
        job.deploy(site.launcher, site.regions, site.default_role)
        from mu.apps.png2y4m import bucket_exists

        if not bucket_exists(s3, job.bucket):
            s3.create_bucket(Bucket=job.bucket)
    job.upload_inputs(s3, site.deploys_jobs, out)
    if not options.resume:
        return actors
    finished = set(job.finished(s3, actors))
    todo = [a for a in actors if a not in finished]
    print(f"--resume: {len(finished)} of {len(actors)} chunks are already complete; "
          f"{len(todo)} to run", file=out)
    return todo


def preflight(
    job: Job,
    options: RunOptions,
    site: Site | None,
    s3: Any,
    actors: list[int],
    setup: Sequence[str] = (),
) -> tuple[list[str], KeySet | None]:
    """Collect every problem visible before launch. Returns (problems, keys or None).

    ``setup`` holds what was found while setting up the site; without a site or an S3
    client the checks that need them are skipped.
    """
    problems: list[str] = list(setup)
    keys = None
    try:
        keys = load_keys(options)
    except ConfigError as exc:
        problems.append(str(exc))
    if options.price_file:  # the bill needs it at the end: a bad one stops the run now
        from mu.cost import load_prices

        try:
            load_prices(options.price_file)
        except ConfigError as exc:
            problems.append(str(exc))
    if getattr(job, "needs_relay", False):  # its workers talk through the relay
        from mu.relay import check_port

        host = options.host or (site.listen_host if site is not None else "127.0.0.1")
        taken = check_port(host, options.relay_port)
        if taken:
            problems.append(taken)
    if s3 is None or site is None:
        return problems, keys  # nothing below can be checked without them
    try:
        problems.extend(job.preflight(s3, actors))
    except MuError as exc:
        problems.append(str(exc))
    for region in site.regions:
        try:
            found = site.launcher.function_exists(job.function, region)
        except MuError as exc:
            problems.append(str(exc))
            continue
        if not found:
            problems.append(
                f"function {job.function!r} not found in {region} "
                "(deploy it with `mu lambdaize`, or pass -l)"
            )
    return problems, keys


def _report(problems: list[str], out: TextIO) -> RunResult:
    """Print preflight's one report; exit status 2, nothing launched."""
    print("mu: preflight found problems; nothing was launched:", file=out)
    for problem in problems:
        print(f"  - {problem}", file=out)
    return RunResult(2, problems=tuple(problems))


def execute(
    coordinator: Coordinator,
    options: RunOptions,
    out: TextIO | None = None,
    bill: Callable[[CoordinatorResult],
                   tuple[dict[tuple[int, int], dict[str, Any]], str, list[str]]] | None = None,
) -> CoordinatorResult:
    """Run ``coordinator`` with the live view, ``-P`` profiling, ``-O`` record and the report.

    ``bill`` prices the run: the record fields by (actor, attempt), the cost the summary
    line ends with, and the lines printed after it (where the figures come from)."""
    from mu.report import LiveStatus, final_report

    stream = out or sys.stderr
    if not coordinator.config.tls:
        print(
            "mu: WARNING: --no-tls: workers and coordinator talk in the clear, and anyone "
            "who can reach the port can pose as a worker",
            file=stream,
        )
    live = LiveStatus(stream, coordinator.config.actor_numbers())
    coordinator.status = live.update
    try:
        if options.profile:
            import cProfile

            profiler = cProfile.Profile()
            result = profiler.runcall(coordinator.run)
            profiler.dump_stats(options.profile)
        else:
            result = coordinator.run()
    finally:
        live.close()
    fields: dict[tuple[int, int], dict[str, Any]] = {}
    cost, notes = "", list[str]()
    if bill is not None and result.actors:
        fields, cost, notes = bill(result)
    if options.record:
        result.write_record(options.record, fields)
    final_report(result, stream, cost)
    for note in notes:
        print(note, file=stream)
    return result


# -- --dry-run: the preflight, the plan and the estimate; nothing launched ------------------


def dry_run(
    job: Job,
    options: RunOptions,
    site: Site | None,
    out: TextIO | None = None,
    regions: Sequence[str] = (),
) -> RunResult:
    """Run the preflight, print the plan and the estimate, launch nothing.

    Args:
        job: the job that would run.
        options: its run options (``estimate_from``, ``price_file``, ``resume``...).
        site: where it would run; None for a private local stage that this command would
            start only to run the job (a dry run does not start it: what needs it is said
            to be unchecked).
        out: where the plan goes (default stdout).
        regions: the regions, when there is no site.

    Returns:
        exit status 0 when the preflight is clean, 2 (with the problems) otherwise.

    Raises:
        ConfigError: a bad price file or run record (``--estimate-from``).
    """
    from mu.cost import JobCost, load_prices

    out = out or sys.stdout
    prices = load_prices(options.price_file)  # a bad table is an error before anything else
    where = tuple(site.regions) if site is not None else tuple(regions)
    actors = list(run_config(options, site, job.workers, job.offset).actor_numbers()
                  ) if site is not None else _actors(options, job)
    problems: list[str] = []
    notes: list[str] = []
    finished: list[int] = []
    s3 = None
    if site is None:
        notes.append("the local stage (emulator and S3) was not started: it is private to a "
                     "run; the function is deployed, the bucket made and --input-dir "
                     "uploaded when the run starts")
    else:
        problems.extend(site.check_credentials())
        if not problems:
            s3 = site.s3_client(where[0])
            try:
                site.dial_back_address(where[0])
            except ConfigError as exc:
                problems.append(str(exc))
        if site.deploys_jobs:
            notes.append(f"{site.name} stage: the function is deployed, the bucket made and "
                         "--input-dir uploaded when the run starts (not checked here)")
    found, keys = preflight(job, options, site if s3 is not None and not (
        site is not None and site.deploys_jobs) else None, s3, actors, problems)
    if s3 is not None and options.resume and not found:
        try:
            finished = job.finished(s3, actors)
        except MuError as exc:
            found.append(str(exc))
    todo = [a for a in actors if a not in set(finished)]
    cost = job if isinstance(job, JobCost) else None
    frames = cost.frames_per_worker if cost else None
    print(f"mu: dry run of {len(todo)} worker(s); nothing is launched", file=out)
    print("plan:", file=out)
    print(f"  workers: {len(todo)} actors ({_span(todo)})"
          + (f" + {options.extra} spare(s)" if options.extra else ""), file=out)
    print(f"  frames per worker: {frames if frames is not None else 'n/a (not a framed job)'}",
          file=out)
    print(f"  regions: {', '.join(where)} (invoked round-robin)", file=out)
    if site is None or site.deploys_jobs:
        functions, told, _ = _functions(None, job.function, where)
    else:
        functions, told, _ = _functions(site if s3 is not None else None, job.function,
                                        where, "not read, for want of usable credentials")
    for line in told:
        print(f"  function: {line}", file=out)
    print(f"  bucket: s3://{job.bucket}", file=out)
    if s3 is not None and not (site is not None and site.deploys_jobs):
        print(f"  inputs: {'missing (see problems)' if found else 'all found'}", file=out)
    else:
        print("  inputs: not checked (see notes)", file=out)
    if options.resume:
        print(f"  --resume: {len(finished)} of {len(actors)} outputs already exist complete"
              + (f" ({_span(finished)})" if finished else ""), file=out)
    print(f"  keys: {_keys_in_use(options, keys)}", file=out)
    for note in notes:
        print(f"  note: {note}", file=out)
    seconds, assumption = _duration(options, frames, functions)
    print("estimate:", file=out)
    print(f"  assumption: {assumption}", file=out)
    if cost is None:
        print("  assumption: S3 requests are the job's states' own business: not counted",
              file=out)
    for line in _estimate_lines(cost, todo, options, where, functions, seconds, prices):
        print(f"  {line}", file=out)
    if found:
        print("mu: preflight found problems; the run would launch nothing:", file=out)
        for problem in found:
            print(f"  - {problem}", file=out)
        return RunResult(2, problems=tuple(found))
    print("mu: preflight is clean", file=out)
    return RunResult(0)


def _actors(options: RunOptions, job: Job) -> list[int]:
    if options.actors is not None:
        return list(options.actors)
    return list(range(job.offset, job.offset + job.workers))


def _span(actors: Sequence[int]) -> str:
    if not actors:
        return "none"
    if list(actors) == list(range(actors[0], actors[0] + len(actors))):
        return f"{actors[0]}-{actors[-1]}" if len(actors) > 1 else str(actors[0])
    return ",".join(str(a) for a in actors[:10]) + (",..." if len(actors) > 10 else "")


def _keys_in_use(options: RunOptions, keys: KeySet | None) -> str:
    if not options.tls:
        return "none (--no-tls: coordinator and workers talk in the clear)"
    given = options.keys
    ca = given.ca_cert or os.environ.get("CA_CERT")
    if not ca:
        return "ephemeral keys made for this run"
    cert = given.server_cert or os.environ.get("SRV_CERT")
    worker = given.worker_cert or os.environ.get("WORKER_CERT")
    return (f"CA {ca}, coordinator {cert}, worker "
            f"{worker or 'worker_cert.pem beside it, or one made from ca_key.pem'}")


def _functions(site: Site | None, function: str, regions: Sequence[str], unread: str = ""
               ) -> tuple[dict[str, FunctionSettings], list[str], list[str]]:
    """The function's settings in each region as deployed, read through ``site``, the lines
    that say them and where they come from, and what fell back to mu lambdaize's defaults
    (empty: nothing did). Without a site: the defaults, because ``unread`` (by default:
    the run deploys the function itself, with them)."""
    from mu.errors import MuError

    defaults = FunctionSettings()
    settings: dict[str, FunctionSettings] = {}
    whence: dict[str, str] = {}
    fallbacks: list[str] = []
    for region in regions:
        if site is None:
            settings[region] = defaults
            whence[region] = (f"mu lambdaize's defaults: {unread}" if unread else
                              "mu lambdaize's defaults, with which the run deploys it")
            if unread:
                fallbacks.append(unread)
            continue
        try:
            found = site.function_settings(function, region)
        except MuError as exc:
            found = None
            fallbacks.append(f"its configuration could not be read in {region} ({exc})")
        else:
            if found is None:
                fallbacks.append(f"not deployed yet in {region}")
        settings[region] = found or defaults
        whence[region] = (f"as deployed in {region}" if found else
                          f"mu lambdaize's defaults: {fallbacks[-1]}")
    lines: dict[str, list[str]] = {}
    for region, f in settings.items():
        shown = (f"{function}, {f.memory_mb} MB, timeout {f.timeout_s} s, {f.architecture} "
                 f"({whence[region]})")
        lines.setdefault(shown, []).append(region)
    return settings, list(lines), fallbacks


def _duration(options: RunOptions, frames: int | None,
              functions: Mapping[str, FunctionSettings]) -> tuple[Any, str]:
    """The assumed seconds per invocation (None: each function's timeout), and the
    sentence that says where they are from."""
    from mu.cost import durations_from_record, read_record_lines, record_frames

    if not options.estimate_from:
        timeouts = ", ".join(dict.fromkeys(f"{f.timeout_s} s" for f in functions.values()))
        return None, (f"every invocation runs the whole function timeout ({timeouts}): an "
                      "upper bound (--estimate-from RUN.jsonl uses an earlier run's "
                      "durations)")
    lines = read_record_lines(options.estimate_from)
    then = record_frames(lines)
    seconds, parts = durations_from_record(lines, then, frames)
    shown = ", ".join(f"{name} {value:.3f} s" for name, value in parts.items())
    scaled = (f", per-frame states scaled by {frames}/{then} frames"
              if then and frames and then != frames else "")
    return seconds, (f"every invocation lasts {seconds:.3f} s, the per-state durations of "
                     f"{options.estimate_from}{scaled} ({shown})")


def _estimate_lines(cost: Any, todo: list[int], options: RunOptions, regions: tuple[str, ...],
                    functions: Mapping[str, FunctionSettings], seconds: Any, prices: Any
                    ) -> list[str]:
    from mu.cost import Plan, describe, estimate

    per_worker: dict[str, int] = {}
    coordinator: dict[str, int] = {}
    if cost is not None:
        per_worker, coordinator = cost.s3_requests(len(todo))
    plan = Plan(len(todo) + options.extra, regions, functions, seconds, per_worker,
                coordinator, spares=options.extra)
    return describe(estimate(plan), prices)


# -- the bill after a run -----------------------------------------------------------------


def _bill(
    result: CoordinatorResult, job: Job, options: RunOptions, site: Site, started_ms: int,
) -> tuple[dict[tuple[int, int], dict[str, Any]], str, list[str]]:
    """Price the run: its attempts from their REPORT lines (read now through the site's
    CloudWatch Logs, the same code for every site), else from the coordinator's view; the
    workers that took no actor (spares); the coordinator's own S3 requests as the job
    counts them.

    Returns the record fields by (actor, attempt) (the first also carries the run-wide
    part), the cost for the summary line, and the lines that say where it comes from."""
    from mu.cost import JobCost, load_prices

    prices = load_prices(options.price_file)
    lines = [a.to_record() for a in result.actors]
    attempts = sum(1 for line in lines if line.get("attempt"))
    coordinator: Mapping[str, int] = {}
    if isinstance(job, JobCost):
        coordinator = job.s3_requests(len(result.final))[1]
    bills, notes = price_record(lines, site, job.function, prices, started_ms,
                                wait=REPORT_WAIT,
                                spares=result.launched + site.duplicated() - attempts,
                                coordinator_s3=coordinator)
    fields: dict[tuple[int, int], dict[str, Any]] = {
        (b.actor, b.attempt): {"cost": b.to_record()}
        for b in bills.invocations if b.actor is not None}
    if fields:
        fields[min(fields)]["run_cost"] = bills.run_record()
    return fields, bills.phrase(), [f"mu: cost: {note}" for note in notes]


def price_record(
    lines: Sequence[Mapping[str, Any]], site: Site, function: str, prices: Any,
    start_ms: int | None = None, wait: float = 0.0, spares: int = 0,
    coordinator_s3: Mapping[str, int] | None = None,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> tuple[Any, list[str]]:
    """Price a run record's attempts (:func:`mu.cost.bill`) with the REPORT lines of their
    request ids, read through the site's CloudWatch Logs from a minute before ``start_ms``
    (the run's start) on; while some are missing, read again every half second for up to
    ``wait`` seconds (an invocation writes its REPORT as it ends, which may be just after
    the run's end, and CloudWatch stores it a moment later).

    Args:
        spares: invocations that took no actor (spares, late arrivals, duplicates): billed
            from REPORT lines of this run that no attempt claims, else for the function
            timeout (an upper bound).
        coordinator_s3: the coordinator's own S3 requests, by kind.

    Returns:
        the bill (:class:`mu.cost.RunBill`), and the lines that say where its figures come
        from (what was an upper bound and why).
    """
    from mu.cost import RunBill, bill, s3_dollars
    from mu.cost import spares as bill_spares

    functions, _, fallbacks = _functions(site, function, site.regions)
    wanted = {str(line["request_id"]) for line in lines if line.get("request_id")}
    since = None if start_ms is None else start_ms - LOG_CLOCK_SLACK_MS
    deadline = clock() + wait
    found = _reports(site, function, wanted, since, spares)
    while found.again and clock() < deadline:
        sleep(min(0.5, max(0.0, deadline - clock())))
        found = _reports(site, function, wanted, since, spares)
    attempts = bill(lines, found.reports, functions, prices, site.regions[0])
    others = [(r, region) for r, region, at in found.others
              if start_ms is None or at >= start_ms][:max(0, spares)]
    extra = bill_spares(others, spares - len(others), functions, prices)
    coordinator = dict(coordinator_s3 or {})
    result = RunBill(tuple(attempts + extra), coordinator,
                     s3_dollars(coordinator, prices, site.regions[0]), prices)
    notes = [result.how()]
    if fallbacks and result.bounded:
        notes.append(f"the function's settings were not read ({'; '.join(fallbacks)}): "
                     "upper bounds use mu lambdaize's defaults there")
    if result.bounded:
        notes.append(f"{found.why or 'no REPORT line for some invocations'}: the attempts "
                     "without one are billed for the coordinator's view of the worker's "
                     "lifetime (launch to end), an upper bound")
    return result, notes


@dataclass
class _Found:
    """What :func:`_reports` found."""

    reports: dict[str, Any]  # request id -> (Report, region)
    others: list[tuple[Any, str, int]]  # (Report, region, its time in ms) claimed by none
    why: str  # why some wanted ones are missing ("": none is)
    again: bool  # whether reading again may find more


def _reports(site: Site, function: str, wanted: set[str], start_ms: int | None, spares: int
             ) -> _Found:
    """The REPORT lines of ``wanted`` request ids, and those of no attempt (for the
    ``spares``), from every region of the site."""
    from mu.cost import parse_report
    from mu.errors import MuError
    from mu.logs import read_events

    found: dict[str, Any] = {}
    others: list[tuple[Any, str, int]] = []
    problems: list[str] = []
    for region in site.regions:
        try:
            client = site.logs_client(region)
            if client is None:
                why = (f"the {site.name} site keeps no Lambda logs" if wanted else
                       "no worker told its request id (not run by Lambda)")
                return _Found({}, [], why, False)
            events = read_events(client, function, f"in {region}", start_ms,
                                 pattern='"REPORT RequestId"')
        except MuError as exc:
            problems.append(str(exc))
            continue
        for event in events:
            report = parse_report(event.message)
            if report is None:
                continue
            if report.request_id in wanted:
                found[report.request_id] = (report, region)
            else:
                others.append((report, region, event.timestamp))
    missing = len(wanted) - len(found)
    again = bool(missing) or len(others) < spares
    if not missing:
        return _Found(found, others, "", again)
    why = (f"no REPORT line found for {missing} of {len(wanted)} invocation(s) in CloudWatch "
           "Logs" if wanted else "no worker told its request id (not run by Lambda)")
    if problems:
        why += f" ({problems[0]})"
    return _Found(found, others, why, again)
