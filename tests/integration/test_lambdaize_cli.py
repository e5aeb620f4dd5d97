"""``mu lambdaize`` typed as a user types it: templates of any shape, and Lambda's size limits.

The 2016 interface is positional (``EXECUTABLE PRE_ARGS POST_ARGS [EXTRA_FILE ...]``): a
template may be empty or start with a dash (``'-x'``), and the options may come before or
after the words. A bundle above Lambda's 250 MB unzipped is refused before any file is read;
a zip above 50 MB before it is written or deployed (unless it goes through S3).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mu.apps.png2y4m import COMMAND
from mu.errors import ConfigError
from mu.lambdaize import MAX_UNZIPPED, LambdaizeOptions, lambdaize
from mu.launch import FunctionSpec, LaunchReport, LaunchSpec


@pytest.fixture
def prog(tmp_path: Path) -> Path:
    """A script Lambda can run, in the test's private directory."""
    path = tmp_path / "prog"
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(0o755)
    return path


def mu_lambdaize(
    *words: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "mu.cli", "lambdaize", *words],
        capture_output=True, text=True, cwd=cwd, env={**base, **(env or {})}, timeout=300,
        check=False,
    )


def command_in(zip_path: Path) -> str:
    with zipfile.ZipFile(zip_path) as zf:
        command: str = json.loads(zf.read("mu_command.json"))["command"]
        return command


def test_the_2016_command_with_a_dash_template(prog: Path, tmp_path: Path) -> None:
    """The user's literal command; SKIP_UPLOAD is lambdaize.sh's own variable."""
    done = mu_lambdaize("./prog", "", "-x", cwd=tmp_path, env={"SKIP_UPLOAD": "1"})
    assert done.returncode == 0, done.stderr
    [zip_path] = tmp_path.glob("prog_*.zip")
    assert command_in(zip_path) == "./prog -x"


@pytest.mark.parametrize(
    ("words", "command", "extra"),
    [
        (["--skip-upload", "--name", "f", "./prog", "", "-x"], "./prog -x", []),
        (["./prog", "", "-x", "--name=f", "--skip-upload"], "./prog -x", []),
        (["./prog", "-a -b", "", "--skip-upload", "--name", "f"], "-a -b ./prog", []),
        (["./prog", "", "--verbose", "--skip-upload", "--name", "f"], "./prog --verbose", []),
        (["--name", "f", "--skip-upload", "--", "./prog", "-h", "--", "data.txt"],
         "-h ./prog --", ["data.txt"]),
        (["./prog", "", "-i -d -o ##OUTFILE## ##INFILE##", "data.txt", "--skip-upload",
          "--name", "f"], "./prog -i -d -o ##OUTFILE## ##INFILE##", ["data.txt"]),
    ],
    ids=["flags-first", "flags-after", "pre-args", "long-dash-template", "double-dash",
         "extra-file"],
)
def test_templates_of_any_shape_with_flags_anywhere(
    prog: Path, tmp_path: Path, words: list[str], command: str, extra: list[str]
) -> None:
    (tmp_path / "data.txt").write_text("data\n")
    done = mu_lambdaize(*words, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert command_in(tmp_path / "f.zip") == command
    with zipfile.ZipFile(tmp_path / "f.zip") as zf:
        names = set(zf.namelist())
    assert {"prog", *extra} <= names


def test_the_readme_command_deploys_to_the_local_backend(
    png2y4m_binary: Path, tmp_path: Path
) -> None:
    done = mu_lambdaize(
        str(png2y4m_binary), "", "-i -d -o ##OUTFILE## ##INFILE##", "--backend", "local",
        "--name", "png2y4m", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    conf = json.loads(done.stdout)
    assert conf["FunctionName"] == "png2y4m" and conf["Handler"] == "lambda_function.lambda_handler"
    assert command_in(tmp_path / "png2y4m.zip") == f"./png2y4m {COMMAND}"


def test_one_function_carries_several_programs(
    png2y4m_binary: Path, vpxenc_binary: Path, tmp_path: Path
) -> None:
    """``--also`` ships more programs beside EXECUTABLE; the 2016 words stay as they were."""
    done = mu_lambdaize(
        str(png2y4m_binary), "", "-i -d -o ##OUTFILE## ##INFILE##", "--also",
        str(vpxenc_binary), "--name", "encode", "--skip-upload", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert command_in(tmp_path / "encode.zip") == f"./png2y4m {COMMAND}"
    with zipfile.ZipFile(tmp_path / "encode.zip") as zf:
        modes = {info.filename: info.external_attr >> 16 & 0o777 for info in zf.infolist()}
        assert zf.read("vpxenc") == vpxenc_binary.read_bytes()
    assert modes["png2y4m"] == modes["vpxenc"] == 0o755


def test_an_also_program_is_checked_like_the_executable(prog: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a program\n")
    done = mu_lambdaize("./prog", "--also", "./notes.txt", "--skip-upload", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["mu: error: 'notes.txt' is not executable (chmod +x it)"]
    assert not list(tmp_path.glob("*.zip"))


@pytest.mark.parametrize(
    ("words", "message"),
    [([], "the following arguments are required: executable"),
     (["./prog", "--memory"], "argument --memory: expected one argument")],
    ids=["no-executable", "option-without-value"],
)
def test_usage_errors_are_one_line(
    prog: Path, tmp_path: Path, words: list[str], message: str
) -> None:
    done = mu_lambdaize(*words, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == f"mu lambdaize: error: {message}"


# ------------------------------------------------------------------ Lambda's size limits


def test_a_bundle_above_250_mb_unzipped_is_refused_before_reading(
    prog: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # sparse: the size is there, the bytes are not
        f.truncate(MAX_UNZIPPED + 1)
    done = mu_lambdaize("./prog", "", "", "big.bin", "--skip-upload", "--name", "f",
                        cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert re.match(r"mu: error: the bundle would be 250\.\d MB \(\d+ bytes\) unzipped", line)
    assert f"above Lambda's 250 MB ({MAX_UNZIPPED} bytes) limit" in line
    assert "largest file: big.bin" in line
    assert not (tmp_path / "f.zip").exists()


class RecordingLauncher:
    """A launcher that records what it was asked to deploy."""

    name = "lambda"

    def __init__(self) -> None:
        self.created: list[str] = []

    def create_function(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        self.created.append(spec.name)
        return {"FunctionName": spec.name}

    def function_exists(self, name: str, region: str) -> bool:
        return name in self.created

    def delete_function(self, name: str, region: str) -> None:
        return None

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        raise AssertionError("lambdaize never launches")

    def close(self) -> None:
        return None


def test_a_zip_above_the_direct_upload_limit_is_refused_before_deploying(
    prog: Path, tmp_path: Path
) -> None:
    """The limit is Lambda's 50 MB; a smaller one here keeps the test fast."""
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(300_000))  # does not compress
    options = LambdaizeOptions(
        executable=str(prog), extra_files=(str(noise),), name="f", role="arn:aws:iam::1:role/r",
        out_dir=str(tmp_path), max_zipped=200_000,
    )
    launcher = RecordingLauncher()
    with pytest.raises(ConfigError) as refused:
        lambdaize(options, launcher)
    message = str(refused.value)
    said = re.match(r"f\.zip is (\d+\.\d) MB \((\d+) bytes\), above Lambda's ", message)
    assert said, message
    assert int(said[2]) > 300_000 and said[1] == f"{int(said[2]) / 2**20:.1f}"
    assert "(200000 bytes) limit for a zip uploaded directly" in message
    assert "--code-bucket" in message
    assert launcher.created == [] and not (tmp_path / "f.zip").exists()
    # Through S3 (no direct-upload limit) the same bundle deploys.
    from dataclasses import replace

    lambdaize(replace(options, max_zipped=None), launcher)
    assert launcher.created == ["f"] and (tmp_path / "f.zip").stat().st_size > 300_000
