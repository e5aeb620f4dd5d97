"""The bill after a real local run: request ids told by the workers, REPORT lines read
through CloudWatch Logs (moto's, over HTTP), the fallback when none is found.

The local emulator writes Lambda's REPORT lines into its CloudWatch Logs, so a local run is
billed from them: the test reads them back itself through the logs API and checks every
figure of the bill against them and the price table. It then puts REPORT events of its
own (other request ids, known figures) into the site's CloudWatch Logs with boto3, exactly
as Lambda writes them, and prices a record that names them through the same reader; one
whose request ids have no REPORT falls back, and says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import time
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mu.apps.png2y4m_run import Png2Y4MJob
from mu.cli import parse_png2y4m
from mu.cost import Report, load_prices, money, parse_report
from mu.frames import write_frames
from mu.launch import Site
from mu.runopts import price_record, run

ROOT = Path(__file__).resolve().parents[2]
PRICES = load_prices()


def put_reports(logs: Any, function: str, reports: dict[str, tuple[int, int]]) -> None:
    """One environment stream per invocation, Lambda's START/END/REPORT lines in it."""
    group = f"/aws/lambda/{function}"
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=group)
    now = int(time.time() * 1000)
    for n, (request, (billed, memory)) in enumerate(reports.items()):
        stream = f"{time.strftime('%Y/%m/%d', time.gmtime())}/[$LATEST]env{n:04d}"
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
            {"timestamp": now, "message": f"START RequestId: {request} Version: $LATEST\n"},
            {"timestamp": now + 1, "message": f"END RequestId: {request}\n"},
            {"timestamp": now + 1, "message": (
                f"REPORT RequestId: {request}\tDuration: {billed - 0.4:.2f} ms\tBilled "
                f"Duration: {billed} ms\tMemory Size: {memory} MB\tMax Memory Used: 70 MB\t"
                "Init Duration: 150.12 ms\t\n")},
        ])


def emulator_reports(site: Site, function: str) -> dict[str, Report]:
    """The REPORT lines the emulator wrote for ``function``, read back through the logs API
    with boto3 (not through mu's reader)."""
    logs = site.logs_client("us-east-1")
    found: dict[str, Report] = {}
    token: dict[str, str] = {}
    while True:
        page = logs.filter_log_events(logGroupName=f"/aws/lambda/{function}", **token)
        for event in page["events"]:
            report = parse_report(event["message"])
            if report is not None:
                found[report.request_id] = report
        if not page.get("nextToken"):
            return found
        token = {"nextToken": page["nextToken"]}


def hand(billed_ms: int, memory: int, arch: str = "x86_64", region: str = "us-east-1"
         ) -> Decimal:
    """One invocation's Lambda dollars, from the table by hand."""
    p = PRICES.region(region)
    return p.request + p.gb_second[arch] * Decimal(memory) / 1024 * Decimal(billed_ms) / 1000


def test_a_local_run_is_billed_from_the_report_lines_the_emulator_wrote(
    local: Site, png2y4m_binary: Path, tmp_path: Path
) -> None:
    frames = write_frames(tmp_path / "in", 4, 48, 32, depth=8)
    record = tmp_path / "run.jsonl"
    job, options, _ = parse_png2y4m([
        "-n", "2", "-f", "2", "-X", "1", "-t", "0", "--binary", str(png2y4m_binary),
        "-O", str(record), "--input-dir", str(frames[0].parent), "-l", "png2y4m-bill",
        "-v", "bill"])
    out = io.StringIO()
    done = run(Png2Y4MJob(job), options, local, out=out)
    assert done.exit_status == 0, out.getvalue()
    assert done.run is not None and done.run.launched == 3  # two workers and a spare
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    ids = [line["request_id"] for line in lines]
    assert len(set(ids)) == 2 and all(ids)  # every worker told its Lambda request id
    written = emulator_reports(local, "png2y4m-bill")
    assert set(ids) < set(written) and len(written) == 3  # the spare's invocation too
    for line in lines:  # each attempt is billed as the emulator's REPORT line says
        cost, report = line["cost"], written[line["request_id"]]
        assert (cost["source"], cost["region"], cost["billed_ms"], cost["memory_mb"]) == (
            "REPORT", "us-east-1", report.billed_ms, report.memory_mb)
        assert report.memory_mb == 1536  # the deployed function's
        # the worker's S3 requests, as the coordinator saw them answered: a GET per frame
        # and a PUT for its chunk, priced apart
        assert line["s3"] == cost["s3"] == {"GET": 2, "PUT": 1}
        s3 = PRICES.region("us-east-1").s3_per_1000
        assert Decimal(cost["s3_dollars"]) == (2 * s3["GET"] + s3["PUT"]) / 1000
        assert Decimal(cost["lambda_dollars"]) == hand(report.billed_ms, 1536)
        assert Decimal(cost["dollars"]) == Decimal(cost["lambda_dollars"]) + Decimal(
            cost["s3_dollars"])
    # the spare: the REPORT no attempt claims; the coordinator's listing: the job's count
    run_cost = lines[0]["run_cost"]
    [spare] = run_cost["spares"]
    spare_report = written[next(iter(set(written) - set(ids)))]
    assert (spare["kind"], spare["source"], spare["billed_ms"]) == (
        "spare", "REPORT", spare_report.billed_ms)
    assert run_cost["coordinator_s3"] == {"LIST": 1}
    total = (sum(Decimal(line["cost"]["dollars"]) for line in lines)
             + Decimal(spare["dollars"]) + Decimal(run_cost["coordinator_dollars"]))
    assert Decimal(run_cost["total"]) == total
    # the summary line carries the cost, each kind apart; no upper bound was needed
    report = out.getvalue()
    [summary] = [t for t in report.splitlines() if t.startswith("mu: 2 done")]
    assert f"; cost {money(total)} (work $" in summary and " x2; spare $" in summary
    assert "S3 $" in summary and "4 GET, 2 PUT, 1 LIST" in summary
    assert "upper bound" not in report and "3 of 3 invocation(s) billed from their REPORT" in (
        report)

    # mu cost reads the record the run wrote
    shown = subprocess.run([sys.executable, "-m", "mu.cli", "cost", str(record)],
                           capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"total: {money(total)} (")
    assert "by state:" in shown.stdout and "RetrieveAndRunState" in shown.stdout
    assert "  spare: $" in shown.stdout and "  coordinator S3: $" in shown.stdout and "(workers' S3 requests)" in shown.stdout
    assert "actor 1 attempt 1: work" in shown.stdout and "from REPORT" in shown.stdout
    # and mu plot labels each bar with it
    plotted = subprocess.run(
        [sys.executable, "-m", "mu.cli", "plot", str(record), "-o", str(tmp_path / "t.png"),
         "--cost"], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_known_reports_are_priced_and_missing_ones_fall_back_and_say_so(
    local: Site, tmp_path: Path
) -> None:
    lines = [{"actor": a, "attempt": 1, "ok": True, "error": None, "launched": 0.0,
              "ended": 2.5 + a, "timestamps": [[0.1, "A"], [2.5 + a, "FinalState"]]}
             for a in range(2)]
    # REPORT lines with known figures, put where Lambda puts them
    known = [dict(line, request_id=f"known-{line['actor']}") for line in lines]
    wanted = {"known-0": (1234, 1536), "known-1": (5678, 3008)}
    put_reports(local.logs_client("us-east-1"), "png2y4m-known", wanted)
    bills, notes = price_record(known, local, "png2y4m-known", PRICES)
    assert not bills.bounded and len(notes) == 1  # where the figures come from, only
    assert "2 of 2 invocation(s) billed from their REPORT lines" in notes[0]
    for b in bills.invocations:
        billed, memory = wanted[f"known-{b.actor}"]
        assert (b.source, b.billed_ms, b.memory_mb, b.max_memory_mb) == (
            "REPORT", billed, memory, 70)
        assert b.init_ms == Decimal("150.12")
        assert b.dollars == hand(billed, memory)

    # request ids with no REPORT anywhere: the coordinator's view, an upper bound, said so
    lost = [dict(line, request_id=f"lost-{line['actor']}") for line in lines]
    bills, notes = price_record(lost, local, "png2y4m-known", PRICES)
    assert [b.source for b in bills.invocations] == ["upper bound", "upper bound"]
    assert [b.billed_ms for b in bills.invocations] == [2500, 3500]
    assert [b.dollars for b in bills.invocations] == [hand(2500, 1536), hand(3500, 1536)]
    said = " ".join(notes)
    assert "no REPORT line found for 2 of 2" in said and "upper bound" in said
    assert "not deployed yet in us-east-1" in said  # so lambdaize's 1536 MB bound them
    assert bills.phrase().startswith("cost at most $")


def test_dry_run_with_resume_names_the_outputs_that_exist(
    local: Site, png2y4m_binary: Path, tmp_path: Path
) -> None:
    frames = write_frames(tmp_path / "in", 4, 48, 32, depth=8)
    argv = ["-n", "2", "-f", "2", "-t", "0", "--binary", str(png2y4m_binary),
            "-l", "png2y4m-resume", "-v", "resume"]
    job, options, _ = parse_png2y4m([*argv, "--input-dir", str(frames[0].parent)])
    assert run(Png2Y4MJob(job), options, local, out=io.StringIO()).exit_status == 0
    job, options, _ = parse_png2y4m([*argv, "-n", "3", "--resume", "--dry-run"])
    out = io.StringIO()
    done = run(Png2Y4MJob(job), options, local, out=out)
    plan = out.getvalue()
    assert "--resume: 2 of 3 outputs already exist complete (0-1)" in plan
    assert "workers: 1 actors (2)" in plan and "invocations: 1" in plan
    assert done.exit_status == 0 and done.run is None  # nothing launched


def test_dry_run_reads_the_deployed_functions_settings_through_the_lambda_api(
    local: Site, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--backend lambda against the emulator: the plan and the estimate use the function's
    memory, timeout and architecture as GetFunctionConfiguration answers them, and
    lambdaize's defaults, said so, for a function not deployed."""
    from backends.lambda_site import LambdaSite
    from backends.local import LocalLauncher
    from mu.apps.png2y4m import Png2Y4MConfig, upload_inputs
    from mu.lambdaize import LOCAL_ROLE
    from mu.launch import FunctionSpec
    from mu.options import SiteOptions

    launcher = local.launcher
    assert isinstance(launcher, LocalLauncher)
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("lambda_function.py", "def lambda_handler(event, context):\n    return 0\n")
    launcher.create_function(FunctionSpec("cost-arm", bundle.getvalue(), role=LOCAL_ROLE,
                                          memory=3008, timeout=60, architecture="arm64"),
                             "us-east-1")
    frames = write_frames(tmp_path / "in", 4, 48, 32, depth=8)
    upload_inputs(s3, Png2Y4MConfig(video="armed", bucket="excamera-us-east-1",
                                    informat="png16", frames=2), str(frames[0].parent), True)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    site = LambdaSite(SiteOptions(backend="lambda", endpoint_url=launcher.endpoint_url,
                                  s3_endpoint_url=launcher.s3_endpoint_url,
                                  host_addr="127.0.0.1"))
    try:
        plans = {}
        for function in ("cost-arm", "cost-none"):
            job, options, _ = parse_png2y4m(["-n", "2", "-f", "2", "-v", "armed", "-l",
                                             function, "--dry-run", "--no-tls"])
            out = io.StringIO()
            done = run(Png2Y4MJob(job), options, site, out=out)
            plans[function] = (done.exit_status, out.getvalue())
    finally:
        site.close()
    status, plan = plans["cost-arm"]
    assert status == 0, plan
    assert "function: cost-arm, 3008 MB, timeout 60 s, arm64 (as deployed in us-east-1)" in plan
    assert "whole function timeout (60 s)" in plan and "inputs: all found" in plan
    assert "GB-seconds: 352.500 (arm64)" in plan  # 2 x 3008/1024 GB x 60 s
    p = PRICES.region("us-east-1")
    expected = (2 * p.request + p.gb_second["arm64"] * Decimal("352.5")
                + (4 * p.s3_per_1000["GET"] + 2 * p.s3_per_1000["PUT"]
                   + p.s3_per_1000["LIST"]) / 1000)
    assert f"dollars: {money(expected)} " in plan
    status, plan = plans["cost-none"]
    assert status == 2, plan
    assert ("function: cost-none, 1536 MB, timeout 180 s, x86_64 (mu lambdaize's defaults: "
            "not deployed yet in us-east-1)") in plan
    assert "function 'cost-none' not found in us-east-1" in plan


def test_a_retried_attempt_is_billed_apart_from_the_work(
    local: Site, png2y4m_binary: Path, tmp_path: Path
) -> None:
    """A rehearsal fault drops actor 0's first worker (seed 30 plans exactly that): its
    attempt is billed as a retry, from its own REPORT line, apart from the two that did
    the work."""
    frames = write_frames(tmp_path / "in", 4, 48, 32, depth=8)
    record = tmp_path / "run.jsonl"
    job, options, _ = parse_png2y4m([
        "-n", "2", "-f", "2", "-t", "0", "--binary", str(png2y4m_binary), "-O", str(record),
        "--input-dir", str(frames[0].parent), "-l", "png2y4m-retry", "-v", "retry",
        "--faults", "drop=0.5,seed=30", "--retries", "1"])
    out = io.StringIO()
    done = run(Png2Y4MJob(job), options, local, out=out)
    assert done.exit_status == 0, out.getvalue()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    kinds = {(line["actor"], line["attempt"]): line["cost"]["kind"] for line in lines}
    assert kinds == {(0, 1): "retry", (0, 2): "work", (1, 1): "work"}, lines
    written = emulator_reports(local, "png2y4m-retry")
    for line in lines:
        report = written[line["request_id"]]
        assert (line["cost"]["source"], line["cost"]["billed_ms"]) == ("REPORT",
                                                                      report.billed_ms)
    retry = next(line["cost"] for line in lines if line["cost"]["kind"] == "retry")
    [summary] = [t for t in out.getvalue().splitlines() if t.startswith("mu: 2 done")]
    assert f"retry {money(Decimal(retry['dollars']))} x1" in summary
    assert "(work $" in summary and " x2; retry $" in summary, summary


def test_each_invocation_is_priced_in_the_region_whose_logs_hold_its_report(
    local: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = json.loads((ROOT / "mu" / "prices.json").read_text())
    table["regions"]["us-west-1"]["lambda_gb_second"] = {"x86_64": "0.001"}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(table))
    prices = load_prices(path)
    monkeypatch.setattr(local, "regions", ("us-east-1", "us-west-1"))
    put_reports(local.logs_client("us-east-1"), "png2y4m-regions", {"east": (1000, 1536)})
    put_reports(local.logs_client("us-west-1"), "png2y4m-regions", {"west": (1000, 1536)})
    lines = [{"actor": a, "attempt": 1, "ok": True, "error": None, "launched": 0.0,
              "ended": 1.0, "request_id": request, "timestamps": [[0.1, "FinalState"]]}
             for a, request in enumerate(["east", "west", "lost"])]
    bills, _ = price_record(lines, local, "png2y4m-regions", prices)
    east, west, lost = bills.invocations
    assert (east.region, west.region) == ("us-east-1", "us-west-1")
    assert east.dollars == hand(1000, 1536)
    assert west.dollars == prices.region("us-west-1").request + Decimal("0.001") * Decimal(
        "1.5")
    # no REPORT: the dearest region of the run bounds it
    assert (lost.source, lost.region) == ("upper bound", "us-west-1")
    assert "by region: us-east-1 1, us-west-1 2" in bills.how()


def test_a_run_whose_logs_cannot_be_found_is_billed_for_upper_bounds_and_says_why(
    local: Site, png2y4m_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site's logs read from a region where the function never logged: no REPORT line
    is found, each attempt is billed for the coordinator's view of its worker's lifetime,
    and the summary line says "at most", the next line why."""
    import mu.runopts

    elsewhere = local.logs_client("eu-north-1")
    monkeypatch.setattr(local, "logs_client", lambda region: elsewhere)
    monkeypatch.setattr(mu.runopts, "REPORT_WAIT", 0.5)
    frames = write_frames(tmp_path / "in", 4, 48, 32, depth=8)
    record = tmp_path / "run.jsonl"
    job, options, _ = parse_png2y4m([
        "-n", "2", "-f", "2", "-t", "0", "--binary", str(png2y4m_binary), "-O", str(record),
        "--input-dir", str(frames[0].parent), "-l", "png2y4m-nologs", "-v", "nologs"])
    out = io.StringIO()
    done = run(Png2Y4MJob(job), options, local, out=out)
    assert done.exit_status == 0, out.getvalue()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    for line in lines:
        cost = line["cost"]
        assert (cost["source"], cost["memory_mb"]) == ("upper bound", 1536)
        span = line["ended"] - line["launched"]
        assert cost["billed_ms"] == math.ceil(span * 1000 - 1e-9)  # launch to end, rounded up
        assert Decimal(cost["lambda_dollars"]) == hand(cost["billed_ms"], 1536)
    report = out.getvalue().splitlines()
    [summary] = [t for t in report if t.startswith("mu: 2 done")]
    assert "; cost at most $" in summary
    said = "\n".join(t for t in report if t.startswith("mu: cost: "))
    assert "0 of 2 invocation(s) billed from their REPORT lines, 2 for an upper bound" in said
    assert "no REPORT line found for 2 of 2 invocation(s)" in said
    assert "/aws/lambda/png2y4m-nologs" in said  # the log group that is not there, named
