"""Every command that talks to AWS, pointed at a closed port or given no credentials, as a
user types it: one clear line naming what and where, a non-zero exit status, no traceback.

Each case runs ``mu`` as a subprocess in an environment with no AWS credentials (the
credentials and config files are empty files, ``AWS_ACCESS_KEY_ID`` unset) unless the case
adds some, and ``AWS_MAX_ATTEMPTS=1`` so that botocore gives up at once. The "closed port" is
one the kernel gave us on 127.0.0.1 and we closed again, so nothing listens there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CREDS = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed now: connecting to it is refused


@pytest.fixture(scope="module")
def aws_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("aws-home")
    (home / "credentials").write_text("")
    (home / "config").write_text("")
    yield home


def mu(args: list[str], home: Path, tmp: Path, extra: dict[str, str] | None = None,
       ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"),
        AWS_CONFIG_FILE=str(home / "config"),
        AWS_MAX_ATTEMPTS="1",
        HOME=str(home),
        TMPDIR=str(tmp),
        **(extra or {}),
    )
    return subprocess.run(
        [sys.executable, "-m", "mu.cli", *args], env=env, cwd=tmp, capture_output=True,
        text=True, timeout=120,
    )


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]  # "{port}" is the closed port, "{binary}" the png2y4m binary
    env: dict[str, str]
    status: int
    says: tuple[str, ...]  # each must be in the error text
    preflight: bool  # the problems come as preflight's list


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


PNG = ["png2y4m", "-n", "1", "-t", "0", "-b", "no-such-bucket"]
CASES = [
    Case("png2y4m-lambda-closed-port", [*PNG, "--backend", "lambda", "--endpoint-url", "{url}",
         "--s3-endpoint-url", "{url}", "--host-addr", "127.0.0.1"], CREDS, 2,
         ("cannot connect to {url}", "no-such-bucket", "look up function png2y4m",
          "check --s3-endpoint-url", "check --endpoint-url"), True),
    Case("png2y4m-lambda-no-credentials", [*PNG, "--backend", "lambda", "--endpoint-url",
         "{url}", "--s3-endpoint-url", "{url}"], {}, 2,
         ("no AWS credentials", "AWS_ACCESS_KEY_ID"), True),
    Case("png2y4m-lambda-unknown-profile", [*PNG, "--backend", "lambda"],
         {"AWS_PROFILE": "no-such-profile"}, 2, ("'no-such-profile'", "AWS_PROFILE"), True),
    Case("png2y4m-lambda-host-does-not-resolve", [*PNG, "--backend", "lambda",
         "--endpoint-url", "http://no-such-host.invalid:9", "--s3-endpoint-url", "{url}"],
         CREDS, 2, ("no-such-host.invalid", "pass --host-addr", "cannot connect to {url}"),
         True),
    Case("png2y4m-none-closed-port", [*PNG, "--backend", "none", "--s3-endpoint-url", "{url}"],
         CREDS, 2, ("S3 look up bucket 'no-such-bucket' at {url}", "cannot connect"), True),
    Case("png2y4m-none-no-credentials", [*PNG, "--backend", "none", "--s3-endpoint-url",
         "{url}"], {}, 2, ("no AWS credentials",), True),
    Case("png2y4m-local-closed-port", [*PNG, "--backend", "local", "--endpoint-url", "{url}",
         "--s3-endpoint-url", "{url}"], {}, 2,
         ("create function png2y4m in us-east-1", "cannot connect to {url}"), True),
    Case("png2y4m-lambda-input-dir-closed-port", [*PNG, "--backend", "lambda",
         "--endpoint-url", "{url}", "--s3-endpoint-url", "{url}", "--host-addr", "127.0.0.1",
         "--input-dir", "{frames}"], CREDS, 2, ("S3 look up bucket 'no-such-bucket' at {url}",),
         True),
    Case("png2y4m-none-resume-closed-port", [*PNG, "--backend", "none", "--s3-endpoint-url",
         "{url}", "--resume"], CREDS, 2, ("cannot connect to {url}",), True),
    Case("lambdaize-lambda-closed-port", ["lambdaize", "{binary}", "--backend", "lambda",
         "--endpoint-url", "{url}", "--role", "arn:aws:iam::1:role/r", "--name", "f"], CREDS,
         1, ("create function f in us-east-1", "cannot connect to {url}"), False),
    Case("lambdaize-lambda-no-credentials", ["lambdaize", "{binary}", "--backend", "lambda",
         "--endpoint-url", "{url}", "--role", "arn:aws:iam::1:role/r", "--name", "f"], {}, 2,
         ("create function f in us-east-1", "no usable AWS credentials"), False),
    Case("lambdaize-lambda-unknown-profile", ["lambdaize", "{binary}", "--backend", "lambda",
         "--role", "arn:aws:iam::1:role/r"], {"AWS_PROFILE": "no-such-profile"}, 2,
         ("'no-such-profile'", "AWS_PROFILE"), False),
    Case("lambdaize-local-closed-port", ["lambdaize", "{binary}", "--backend", "local",
         "--endpoint-url", "{url}", "--name", "f"], {}, 1,
         ("create function f in us-east-1", "cannot connect to {url}"), False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_one_clear_line_and_no_traceback(
    case: Case, closed_port: int, aws_home: Path, tmp_path: Path, png2y4m_binary: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "00000001.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # never read: S3 is closed
    fill = {"url": url(closed_port), "binary": str(png2y4m_binary), "frames": str(frames)}
    argv = [a.format(**fill) for a in case.argv]
    done = mu(argv, aws_home, tmp_path, case.env)
    text = done.stdout + done.stderr
    assert "Traceback" not in text
    assert done.returncode == case.status, text
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if case.preflight:
        assert lines[0] == "mu: preflight found problems; nothing was launched:"
        problems = lines[1:]
        assert problems and all(p.startswith("  - ") for p in problems), text
    else:
        assert len(lines) == 1 and lines[0].startswith("mu: error: "), text
    for needle in case.says:
        assert needle.format(**fill) in done.stderr, text
    assert "botocore" not in done.stderr
