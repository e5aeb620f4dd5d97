"""``--dry-run`` on the job commands, run as a user runs it: a subprocess.

On the default local backend the private stage is not started; with ``--backend none``
and a real moto S3 server over HTTP the preflight checks the bucket and the inputs. The
dollars printed are the hand computation from the package's price table.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from emulator.s3 import S3Server
from mu.cost import PRICE_FILE
from tests.e2e.test_docs_commands import python_files

ROOT = Path(__file__).resolve().parents[2]
TABLE = json.loads(PRICE_FILE.read_text())["default"]
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def mu(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd),
               "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "mu.cli", *argv], capture_output=True,
                          text=True, env=environ, cwd=cwd, timeout=300, check=False)


def dollars(stdout: str) -> Decimal:
    match = re.search(r"dollars: \$([\d.]+)", stdout)
    assert match, stdout
    return Decimal(match[1])


def hand(workers: int, frames: int, seconds: Decimal, memory: int = 1536) -> Decimal:
    s3 = TABLE["s3_per_1000"]
    lists = max(1, -(-workers * frames // 1000))
    return (Decimal(TABLE["lambda_request"]) * workers
            + Decimal(TABLE["lambda_gb_second"]["x86_64"]) * Decimal(memory) / 1024 * seconds
            * workers
            + (Decimal(s3["GET"]) * workers * frames + Decimal(s3["PUT"]) * workers
               + Decimal(s3["LIST"]) * lists) / 1000)


def test_png2y4m_dry_run_on_local_plans_and_estimates_without_starting_anything(
    tmp_path: Path,
) -> None:
    done = mu(["png2y4m", "-n", "100", "-f", "6", "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "workers: 100 actors (0-99)" in out and "frames per worker: 6" in out
    assert "png2y4m, 1536 MB, timeout 180 s, x86_64 (mu lambdaize's defaults, with which the " \
        "run deploys it)" in out and "keys: ephemeral" in out
    assert "(emulator and S3) was not started" in out
    assert "upper bound" in out and "invocations: 100" in out
    assert "GB-seconds: 27000.000" in out and "600 GET, 100 PUT, 1 LIST" in out
    shown = dollars(out)
    assert shown == round(hand(100, 6, Decimal(180)), 2)
    assert "mu: preflight is clean" in out


WORKED = re.compile(r"^```sh\n(mu png2y4m [^\n]*--dry-run)\n```\n\n[^\n]*\n\n```text\n(.*?)^```",
                    re.M | re.S)


def test_the_worked_example_in_docs_aws_md_is_what_dry_run_prints(tmp_path: Path) -> None:
    """docs/aws.md shows a dry run's whole output: the command prints exactly that."""
    [(command, shown)] = WORKED.findall((ROOT / "docs" / "aws.md").read_text())
    assert command == "mu png2y4m -n 100 -f 6 --dry-run"
    done = mu(command.split()[1:], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown
    # and its figures are the hand computation from the table
    assert dollars(shown) == round(hand(100, 6, Decimal(180)), 2)


def test_spares_are_invoked_and_billed_but_make_no_s3_request(tmp_path: Path) -> None:
    done = mu(["png2y4m", "-n", "10", "-f", "6", "-X", "2", "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "workers: 10 actors (0-9) + 2 spare(s)" in done.stdout
    assert "invocations: 12" in done.stdout and "60 GET, 10 PUT, 1 LIST" in done.stdout


def test_estimate_from_an_earlier_record_scales_per_frame_states(tmp_path: Path) -> None:
    record = tmp_path / "rehearsal.jsonl"
    stamps = [[0.0, "ConfigState"], [1.0, "RetrieveLoopState"], [1.0, "RetrieveAndRunState"],
              [3.0, "RetrieveLoopState"], [3.0, "RetrieveAndRunState"],
              [5.0, "RetrieveLoopState"], [5.0, "UploadState"], [6.0, "FinalState"]]
    record.write_text(json.dumps({"actor": 0, "attempt": 1, "state": "FinalState", "ok": True,
                                  "error": None, "timestamps": stamps}) + "\n")
    done = mu(["png2y4m", "-n", "10", "-f", "6", "--dry-run", "--estimate-from", str(record)],
              tmp_path)
    assert done.returncode == 0, done.stderr
    # 1 s config + 1 s upload + 2 s a frame x 6 frames (the record converted 2)
    assert "lasts 14.000 s" in done.stdout and "scaled by 6/2 frames" in done.stdout
    assert dollars(done.stdout) == round(hand(10, 6, Decimal(14)), 6 if hand(
        10, 6, Decimal(14)) < Decimal("0.01") else 2)


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not JSON"),
    ('{"as_of": "2026-01-01"}', "has no 'source'"),
])
def test_a_bad_price_file_is_one_line(tmp_path: Path, content: str, words: str) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text(content)
    done = mu(["png2y4m", "--dry-run", "--price-file", str(bad)], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and words in done.stderr
    assert done.stderr.startswith("mu: error: price file") and "Traceback" not in done.stderr


def test_a_price_file_overrides_the_table(tmp_path: Path) -> None:
    table = json.loads(PRICE_FILE.read_text())
    table["default"]["lambda_gb_second"]["x86_64"] = "0.001"
    table["regions"] = {}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(table))
    done = mu(["png2y4m", "-n", "2", "-f", "1", "--dry-run", "--price-file", str(path)],
              tmp_path)
    assert done.returncode == 0, done.stderr
    assert "compute $0.54" in done.stdout  # 2 x 1.5 GB x 180 s x $0.001


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name, source in python_files("README.md").items():
        (tmp_path / name).write_text(source)
    return tmp_path


def s3(server: S3Server) -> Any:
    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_mu_run_dry_run_checks_the_bucket_and_launches_nothing(
    workdir: Path, s3_server: S3Server
) -> None:
    argv = ["run", "myjob:Convert", "-n", "3", "--backend", "none", "--s3-endpoint-url",
            s3_server.endpoint_url, "--dry-run"]
    missing = mu([*argv, "-b", "dry-run-missing"], workdir, **CREDS)
    assert missing.returncode == 2, missing.stderr
    assert "bucket 'dry-run-missing' does not exist" in missing.stdout
    assert "the run would launch nothing" in missing.stdout
    s3(s3_server).create_bucket(Bucket="dry-run-here")
    done = mu([*argv, "-b", "dry-run-here"], workdir, **CREDS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "workers: 3 actors (0-2)" in done.stdout and "inputs: all found" in done.stdout
    assert "S3 requests are the job's states' own business" in done.stdout
    assert "payload" not in done.stderr  # backend none launched nothing: no payload printed


def test_encode_dry_run_counts_the_stitch_among_the_coordinator_requests(
    tmp_path: Path,
) -> None:
    done = mu(["encode", "-n", "10", "-f", "6", "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "workers: 10 actors (0-9)" in out and "frames per worker: 6" in out
    assert "invocations: 10" in out
    # each worker: a GET per PNG frame and a PUT for its chunk; the coordinator: one
    # listing page at preflight, and the stitch reads every chunk and writes the video
    assert "70 GET, 11 PUT, 1 LIST" in out, out
    assert "mu: preflight is clean" in out


def test_a_bad_price_file_stops_a_real_run_at_preflight(
    tmp_path: Path, png2y4m_binary: Path
) -> None:
    """The bill needs the table at the end of a run: a bad one is found before launching."""
    from mu.frames import write_frames

    frames = write_frames(tmp_path / "in", 2, 16, 16, depth=8)
    bad = tmp_path / "prices.json"
    bad.write_text('{"as_of": "2026-01-01"}')
    done = mu(["png2y4m", "-n", "1", "-f", "2", "-t", "0", "--binary", str(png2y4m_binary),
               "--input-dir", str(frames[0].parent), "--price-file", str(bad)], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "mu: preflight found problems; nothing was launched:" in done.stderr
    assert f"  - price file {str(bad)!r}: has no 'source'" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_credentials_the_plan_says_the_functions_settings_were_not_read(
    tmp_path: Path,
) -> None:
    done = mu(["png2y4m", "--backend", "lambda", "-n", "3", "-f", "2", "--dry-run"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert ("function: png2y4m, 1536 MB, timeout 180 s, x86_64 (mu lambdaize's defaults: not "
            "read, for want of usable credentials)") in done.stdout
    assert "no AWS credentials found" in done.stdout
