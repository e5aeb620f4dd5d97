"""Hypothesis strategies shared by the unit tests."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Split ``data`` at arbitrary points (possibly into empty-free single bytes)."""
    if not data:
        return []
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=min(len(data), 30))))
    pieces: list[bytes] = []
    start = 0
    for cut in cuts:
        if cut > start:
            pieces.append(data[start:cut])
            start = cut
    pieces.append(data[start:])
    return pieces
