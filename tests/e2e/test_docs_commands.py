"""Every shell command the README and docs/*.md give a user runs here, as the user runs it.

Theory of operation
-------------------
Every fenced ``sh`` block of README.md and docs/*.md is collected by itself: a block added
to the docs is tested without touching this file. A block is one of:

* **skipped**, only if listed in :data:`SKIPPED` with the reason (keyed by the block's first
  command, so a stale entry fails :func:`test_skip_and_xfail_lists_name_existing_blocks`);
* **parsed only**, when one of its ``mu`` commands runs against real AWS
  (``--backend lambda``, which is also ``mu lambdaize``'s default): every ``mu`` command of
  the block must parse with the real argument parser, and nothing is run;
* **run**, everything else: the block is a bash script (``set -e``) run in a subprocess
  against the local backend. Blocks of one document run in order, in one directory of
  their own (as a reader goes through the document), with a private ``HOME`` and cache, no
  AWS credentials, and a ``.venv`` link to this checkout's virtual environment (the
  README's commands start with ``. .venv/bin/activate``). A ``mu emulator`` line (which
  serves until stopped) is started in the background instead: once it has printed its
  endpoints and its ``export`` lines, those lines are pasted in front of the rest of the
  block, as its output tells a user to do; it is stopped when the block ends.

A fenced ``python`` block whose first line is a comment naming a file (``# myjob.py``) is
that file: it is written into its document's directory before the document's first block
runs, so the ``sh`` blocks that follow use it as a reader who saved it would.

A block that fails today because of a known bug is listed in :data:`XFAIL` with the
reason, and is marked ``xfail(strict=True)``: when the bug is fixed, the test says so.
A block that needs something else running beside it (say ``--backend none``, which waits
for workers started by hand in another terminal) belongs in :data:`SKIPPED`, naming the
test that runs that path.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mu.cli import build_parser, parse_lambdaize_args

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```sh[ \t]*\n(.*?)^```", re.M | re.S)
PYTHON_FILE = re.compile(r"^```python[ \t]*\n# ([\w.-]+\.py)[ \t]*\n(.*?)^```", re.M | re.S)
BLOCK_TIMEOUT = 600.0  # seconds: a bound on one block, far above its real duration
EMULATOR_READY = 60.0  # seconds: a bound on `mu emulator` printing its endpoints

SKIPPED = {
    # (document, the block's first command): why it does not run here.
    ("README.md", "make demo"):
        "`make test` is this very suite; `make demo` runs `mu demo`, which "
        "test_mu_demo_runs_as_make_demo_runs_it runs",
    ("README.md", "make test"):
        "the suite's own runners (make test, pytest, tox, make coverage): running them from "
        "a test would recurse",
    ("docs/aws.md", "export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=..."):
        "placeholders for the user's own AWS credentials and execution role",
    ("docs/reliability.md", "mu png2y4m ... -m 10 --retries 4 --faults "
                            "crash=0.1,hang=0.02,drop=0.05,s3-error=0.02,duplicate=0.05,seed=7"):
        "a fragment: '...' stands for a run's other flags (the reliability e2e tests run "
        "these faults)",
    ("docs/aws.md", "mu png2y4m --backend none -n 2 -f 6 -b mybucket --s3-endpoint-url "
                    "http://127.0.0.1:5000"):
        "needs an S3 at that address and workers started by hand in a second terminal: "
        "tests/e2e/test_backend_none.py runs this path with real workers",
    ("docs/encode.md", "ffmpeg -i clip.ivf -c copy clip.webm"):
        "needs ffmpeg, which the suite does not install, and a stitched clip.ivf: "
        "tests/integration/test_vpxenc.py::test_docs_ffmpeg_block_copies_a_stitched_video "
        "runs it where ffmpeg is installed",
    ("docs/vpxenc.md", "mu frames --count 24 --size 320x180 --out frames"):
        "runs from the checkout (function/...): tests/integration/test_vpxenc.py::"
        "test_docs_block_runs_from_the_checkout runs it there",
    ("docs/denoise.md", "mu frames --count 12 --size 320x180 --out frames"):
        "runs from the checkout (function/...): tests/integration/test_denoise_binary.py::"
        "test_docs_block_runs_from_the_checkout runs it there",
}

XFAIL: dict[tuple[str, str], str] = {
    # (document, the block's first command): the known bug that makes it fail today.
}


@dataclass(frozen=True)
class Block:
    """One fenced ``sh`` block of a document."""

    doc: str  # path relative to the repository root
    line: int  # line of the opening fence
    text: str

    @property
    def lines(self) -> list[str]:
        """Logical lines (continuations joined), blank and comment-only lines dropped."""
        joined = self.text.replace("\\\n", " ")
        return [line for line in joined.splitlines() if shlex.split(line, comments=True)]

    @property
    def first(self) -> str:
        return " ".join(shlex.split(self.lines[0], comments=True)) if self.lines else ""

    @property
    def key(self) -> tuple[str, str]:
        return self.doc, self.first

    def mu_commands(self) -> list[list[str]]:
        """The words after ``mu`` of every ``mu`` command in the block."""
        words = [shlex.split(line, comments=True) for line in self.lines]
        return [w[1:] for w in words if w[0] == "mu"]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def collect() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for found in FENCE.finditer(text):
            line = text.count("\n", 0, found.start()) + 1
            blocks.append(Block(str(path.relative_to(ROOT)), line, found.group(1)))
    return blocks


def dry_parse(argv: list[str]) -> tuple[str, str | None]:
    """Parse ``mu ARGV`` as the command would: (subcommand, its --backend or None).

    Raises:
        AssertionError: the parser refuses it (its message included).
    """
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
            if args.command == "emulator":
                from backends.local import emulator_parser

                emulator_parser("mu emulator").parse_args(args.emulator_args)
            elif args.command == "lambdaize":  # it parses its own words (templates may be "-x")
                args = parse_lambdaize_args(args.lambdaize_args)
                args.command = "lambdaize"
    except SystemExit as exc:
        raise AssertionError(f"`mu {shlex.join(argv)}` does not parse: {err.getvalue()}") from exc
    return args.command, getattr(args, "backend", None)


def needs_aws(block: Block) -> bool:
    return any(dry_parse(argv)[1] == "lambda" for argv in block.mu_commands())


BLOCKS = collect()


def params(aws: bool) -> list[object]:
    chosen = []
    for block in BLOCKS:
        if block.key in SKIPPED or needs_aws(block) != aws:
            continue
        marks = [pytest.mark.xfail(reason=XFAIL[block.key], strict=True)] if (
            block.key in XFAIL) else []
        chosen.append(pytest.param(block, id=str(block), marks=marks))
    return chosen


# ----------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def workdirs() -> dict[str, Path]:
    """One working directory per document, shared by its blocks in order."""
    return {}


def python_files(doc: str) -> dict[str, str]:
    """The files a document gives as ``python`` blocks opening with ``# NAME.py``."""
    text = (ROOT / doc).read_text()
    return {m.group(1): f"# {m.group(1)}\n{m.group(2)}" for m in PYTHON_FILE.finditer(text)}


def workdir_for(doc: str, workdirs: dict[str, Path], factory: pytest.TempPathFactory) -> Path:
    if doc not in workdirs:
        work = factory.mktemp("doc")
        (work / ".venv").symlink_to(ROOT / ".venv")
        (work / "home").mkdir()
        for name, source in python_files(doc).items():
            (work / name).write_text(source)
        workdirs[doc] = work
    return workdirs[doc]


def user_env(work: Path) -> dict[str, str]:
    """A user's shell: this checkout's mu on PATH, a private HOME, no AWS credentials."""
    return {
        "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(work / "home"),
        "XDG_CACHE_HOME": str(work / "home" / ".cache"),
        "LANG": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }


def is_emulator_server(line: str) -> bool:
    words = shlex.split(line, comments=True)
    return words[:2] == ["mu", "emulator"] and not {"logs", "--help", "-h"} & set(words)


@contextlib.contextmanager
def emulator_in_background(line: str, work: Path, env: dict[str, str]) -> Iterator[list[str]]:
    """Start ``line`` (a ``mu emulator``); yield the ``export`` lines it printed; stop it."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {line}"], cwd=work, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for out in proc.stdout:
            lines.put(out.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + EMULATOR_READY
        # Its output's last line is the last `export` a user pastes.
        while not (seen and seen[-1].startswith("export AWS_DEFAULT_REGION=")):
            try:
                out = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"`{line}` printed no endpoints in {EMULATOR_READY:g} s: {seen}")
            if out is None:
                pytest.fail(f"`{line}` ended before serving: {seen}")
            seen.append(out)
        assert any(s.startswith("Lambda API: http://127.0.0.1:") for s in seen), seen
        yield [s for s in seen if s.startswith("export ")]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        reader.join(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def run_block(block: Block, work: Path) -> None:
    env = user_env(work)
    with contextlib.ExitStack() as stack:
        script = ["set -e"]
        for line in block.lines:
            if is_emulator_server(line):
                script += stack.enter_context(emulator_in_background(line, work, env))
            else:
                script.append(line)
        done = subprocess.run(
            ["bash", "-x", "-c", "\n".join(script)], cwd=work, env=env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
            check=False,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{block} failed (exit {done.returncode}):\n{output[-6000:]}"
    assert "Traceback" not in output, f"{block} printed a traceback:\n{output[-6000:]}"


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("block", params(aws=False))
def test_block_runs_against_the_local_backend(
    block: Block, workdirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    for argv in block.mu_commands():
        dry_parse(argv)
    run_block(block, workdir_for(block.doc, workdirs, tmp_path_factory))


@pytest.mark.parametrize("block", params(aws=True))
def test_aws_block_parses(block: Block) -> None:
    """Blocks for real AWS are not run (no account here): each ``mu`` command must parse."""
    commands = block.mu_commands()
    assert commands
    for argv in commands:
        dry_parse(argv)


def test_skip_and_xfail_lists_name_existing_blocks() -> None:
    keys = {block.key for block in BLOCKS}
    assert set(SKIPPED) <= keys, set(SKIPPED) - keys
    assert set(XFAIL) <= keys, set(XFAIL) - keys
    assert any(needs_aws(block) for block in BLOCKS)  # the AWS guide is still checked


def test_mu_demo_runs_as_make_demo_runs_it(tmp_path: Path) -> None:
    """``make demo`` is ``mu demo`` after the set-up; run it from a user's directory."""
    recipe = subprocess.run(["make", "-n", "-C", str(ROOT), "demo"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert recipe.returncode == 0 and ".venv/bin/mu demo" in recipe.stdout, recipe.stdout
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "mu"), "demo", "--out", "demo-out"], cwd=tmp_path,
        env=user_env(tmp_path) | {"HOME": str(tmp_path)}, capture_output=True, text=True,
        timeout=BLOCK_TIMEOUT, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    chunks = sorted(p.name for p in (tmp_path / "demo-out").glob("*.y4m"))
    assert chunks == [f"{c:08d}.y4m" for c in range(4)]
    assert (tmp_path / "demo-out" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "demo-out" / "demo.ivf").read_bytes()[:4] == b"DKIF"
    [denoised] = [line for line in done.stdout.splitlines() if line.startswith("  denoised: ")]
    assert "identical to the one-piece reference" in denoised
    assert (tmp_path / "demo-out" / "denoise-timeline.png").read_bytes()[:4] == b"\x89PNG"
    [video] = [line for line in done.stdout.splitlines() if line.startswith("  video: ")]
    assert "VP9 1280x720, 24 frames" in video and "by vpxdec" in video
