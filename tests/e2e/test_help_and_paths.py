"""What a new user meets first: every ``--help`` reads as text (no ``%%`` escapes left), and
the README's ``mu lambdaize function/png2y4m/png2y4m ...`` works from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mu.cli import build_parser


def subcommands() -> list[list[str]]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    names = sorted(action.choices or {})
    return [[], *([n] for n in names), ["emulator", "serve"], ["emulator", "logs"]]


@pytest.mark.parametrize("words", subcommands(), ids=lambda w: " ".join(w) or "mu")
def test_help_has_no_percent_escapes(words: list[str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mu.cli", *words, "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "%%" not in done.stdout


@pytest.mark.parametrize(("command", "by_hand"),
                         [("png2y4m", True), ("run", True), ("encode", False), ("denoise", False)])
def test_help_offers_backend_none_only_where_it_runs(command: str, by_hand: bool,
                                                      tmp_path: Path) -> None:
    """encode and denoise refuse ``--backend none``; their help does not offer it."""
    done = subprocess.run([sys.executable, "-m", "mu.cli", command, "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    offered = "{local,lambda,none}" in done.stdout
    assert offered is by_hand
    assert ("--payload-out" in done.stdout) is by_hand
    if not by_hand:
        assert "--backend {local,lambda}" in done.stdout


def test_readme_lambdaize_command_works_from_any_directory(
    tmp_path: Path, png2y4m_binary: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mu.cli", "lambdaize", "function/png2y4m/png2y4m", "",
         "-i -d -o ##OUTFILE## ##INFILE##", "--backend", "local", "--name", "png2y4m"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"using {png2y4m_binary}" in done.stderr  # it says which file it took
    assert '"FunctionName": "png2y4m"' in done.stdout
    with zipfile.ZipFile(tmp_path / "png2y4m.zip") as bundle:
        assert bundle.read("png2y4m") == png2y4m_binary.read_bytes()
