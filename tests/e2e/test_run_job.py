"""``mu run MODULE:StartState`` and ``mu.run_job``: a job of the user's own, no glue.

The job is the README's own example (its ``# myjob.py`` block), run as a user runs it: a
subprocess in a directory holding ``myjob.py`` and the inputs, on the local backend. The
ways a user can name the state wrongly each end in one line and exit status 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_docs_commands import python_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name, source in python_files("README.md").items():
        (tmp_path / name).write_text(source)
    inputs = tmp_path / "inputs" / "in"
    inputs.mkdir(parents=True)
    (inputs / "00000000.txt").write_text("a\nb\nc\n")
    (inputs / "00000001.txt").write_text("d\n")
    (inputs / "00000002.txt").write_text("")
    return tmp_path


def mu(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "mu.cli", *argv], capture_output=True, text=True, env=env,
        cwd=cwd, timeout=300, check=False,
    )


def test_mu_run_runs_the_readme_job_and_downloads_its_outputs(workdir: Path) -> None:
    done = mu(["run", "myjob:Convert", "-n", "3", "-b", "own-job", "-t", "0", "--input-dir",
               "inputs", "--output-dir", "outputs", "--output-prefix", "out/"], workdir)
    assert done.returncode == 0, done.stderr
    assert "mu: 3 done, 0 error" in done.stderr
    got = {p.name: p.read_text().strip() for p in (workdir / "outputs" / "out").iterdir()}
    assert got == {"00000000.txt": "3", "00000001.txt": "1", "00000002.txt": "0"}
    assert not (workdir / "outputs" / "in").exists()  # inputs are not outputs


def test_run_job_in_the_library_returns_the_result(workdir: Path) -> None:
    code = (
        "import json, mu\nfrom myjob import Convert\n"
        "r = mu.run_job(Convert, workers=2, bucket='lib-job', input_dir='inputs',\n"
        "               output_dir='got')\n"
        "print(json.dumps([r.exit_status, r.run.done, sorted(r.outputs)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=workdir, timeout=300, check=False,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(workdir)})
    assert done.returncode == 0, done.stderr
    status, finished, outputs = __import__("json").loads(done.stdout)
    assert (status, finished) == (0, 2)
    # Without an output prefix every object the run wrote comes back, and no input.
    assert outputs == ["got/out/00000000.txt", "got/out/00000001.txt"]
    assert (workdir / "got" / "out" / "00000000.txt").read_text().strip() == "3"


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("myjob", "'myjob' is not MODULE:StartState (e.g. myjob:Convert)"),
        ("nosuchmodule:Convert", "no module named 'nosuchmodule'"),
        ("myjob:Nope", "module 'myjob' has no 'Nope'"),
        ("json:dumps", "json:dumps is not a state class (a subclass of mu.states.MachineState)"),
        ("broken:Start", "module 'broken' failed to import: ZeroDivisionError: division by zero"),
    ],
)
def test_a_wrong_state_ends_in_one_line(workdir: Path, state: str, message: str) -> None:
    (workdir / "broken.py").write_text("1 / 0\n")
    done = mu(["run", state, "-b", "b", "-t", "0"], workdir)
    assert done.returncode == 2
    assert done.stderr.startswith(f"mu: error: {message}")
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n")  # one line
    assert done.stdout == ""


def test_a_missing_bucket_flag_is_argparse_s_error(workdir: Path) -> None:
    done = mu(["run", "myjob:Convert"], workdir)
    assert done.returncode == 2
    assert "the following arguments are required: -b/--bucket" in done.stderr
    assert "Traceback" not in done.stderr
