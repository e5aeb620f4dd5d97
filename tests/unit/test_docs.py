"""Documentation generated from code stays in step with it."""

from __future__ import annotations

from pathlib import Path

from mu.actor import lifecycle_diagram

ROOT = Path(__file__).resolve().parents[2]


def test_protocol_doc_embeds_the_current_lifecycle_table() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert lifecycle_diagram() in text
