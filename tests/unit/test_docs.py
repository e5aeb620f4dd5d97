"""Documentation generated from code stays in step with it."""

from __future__ import annotations

from pathlib import Path

from mu.actor import lifecycle_diagram

ROOT = Path(__file__).resolve().parents[2]


def test_protocol_doc_embeds_the_current_lifecycle_table() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert lifecycle_diagram() in text


def test_readme_command_table_matches_the_parser() -> None:
    import re

    from mu.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[union-attr]
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `mu (\w+)` \|", readme, re.M))
    assert table == commands


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
