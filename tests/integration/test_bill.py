"""The bill after a real local run: request ids told by the workers, REPORT lines read
through CloudWatch Logs (moto's, over HTTP), the fallback when none is found.

The local emulator writes Lambda's REPORT lines into its CloudWatch Logs, so a local run is
billed from them; the test then puts REPORT events of its own (other request ids, known
figures) into the site's CloudWatch Logs with boto3, exactly as Lambda writes them, and
prices a record that names them through the same reader; one whose request ids have no
REPORT falls back, and says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from mu.apps.png2y4m_run import Png2Y4MJob
from mu.cli import parse_png2y4m
from mu.cost import load_prices
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


def test_a_local_run_is_billed_from_report_lines_or_says_it_fell_back(
    local: Site, png2y4m_binary: Path, tmp_path: Path
) -> None:
    frames = write_frames(tmp_path / "in", 4, 48, 32, depth=8)
    record = tmp_path / "run.jsonl"
    job, options, _ = parse_png2y4m([
        "-n", "2", "-f", "2", "-t", "0", "--binary", str(png2y4m_binary), "-O", str(record),
        "--input-dir", str(frames[0].parent), "-l", "png2y4m-bill", "-v", "bill"])
    out = io.StringIO()
    done = run(Png2Y4MJob(job), options, local, out=out)
    assert done.exit_status == 0, out.getvalue()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    ids = [line["request_id"] for line in lines]
    assert len(set(ids)) == 2 and all(ids)  # every worker told its Lambda request id
    # the emulator wrote each invocation's REPORT line: the run was billed from them
    assert [line["cost"]["source"] for line in lines] == ["REPORT", "REPORT"], lines
    assert all(line["cost"]["memory_mb"] == 1536 for line in lines), lines
    report = out.getvalue()
    assert "upper bound" not in report and "mu: cost $" in report

    # REPORT lines with known figures, for request ids of their own
    known = [dict(line, request_id=f"known-{line['actor']}") for line in lines]
    wanted = {"known-0": (1234, 1536), "known-1": (5678, 3008)}
    put_reports(local.logs_client("us-east-1"), "png2y4m-bill", wanted)
    bills, why = price_record(known, local, "png2y4m-bill", PRICES)
    assert why == ""
    p = PRICES.region("us-east-1")
    for b in bills:
        billed, memory = wanted[f"known-{b.actor}"]
        assert (b.source, b.billed_ms, b.memory_mb, b.max_memory_mb) == (
            "REPORT", billed, memory, 70)
        assert b.init_ms == Decimal("150.12")
        assert b.dollars == p.request + p.gb_second["x86_64"] * Decimal(memory) / 1024 * (
            Decimal(billed) / 1000)

    # request ids with no REPORT anywhere: the coordinator's view, an upper bound, said so
    lost = [dict(line, request_id=f"lost-{line['actor']}") for line in lines]
    bills, why = price_record(lost, local, "png2y4m-bill", PRICES)
    assert [b.source for b in bills] == ["upper bound", "upper bound"]
    assert "no REPORT line found for 2 of 2" in why and "upper bound" in why

    # mu cost reads the record the run wrote
    shown = subprocess.run([sys.executable, "-m", "mu.cli", "cost", str(record)],
                           capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    total = sum(Decimal(line["cost"]["dollars"]) for line in lines)
    assert f"total: ${total:.6f}" in shown.stdout or f"total: ${total:.2f}" in shown.stdout
    assert "by state:" in shown.stdout and "RetrieveAndRunState" in shown.stdout
    assert "actor 1 attempt 1: work" in shown.stdout and "from REPORT" in shown.stdout


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
