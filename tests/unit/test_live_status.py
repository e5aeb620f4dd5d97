"""The live status: one cell per actor, a legend naming each state, and counts.

:func:`mu.report.render_status` is a pure function of the coordinator's snapshot, so it is
checked as text: an exact example, then by property (every actor has one cell, the legend
maps each cell back to that actor's state, and its counts add up), then the terminal view
that draws the same parts with rich.
"""

from __future__ import annotations

import io
import re
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from mu.coordinator import Statistics
from mu.report import FAILED, FINISHED, WAITING, LiveStatus, render_status


def snapshot(states: dict[int, str], total: int, elapsed: float = 4.2) -> Statistics:
    done = sum(1 for s in states.values() if s == "FinalState")
    return Statistics(
        elapsed=elapsed, total=total, waiting=total - len(states), active=len(states) - done,
        done=done, errors=0, rejected=0, connections=len(states), messages_in=10,
        messages_out=9, launched=total, states=states,
    )


def test_example_names_every_state_and_counts_it() -> None:
    stats = snapshot({0: "FinalState", 1: "RetrieveAndRunState", 2: "UploadState",
                      3: "ErrorState", 5: "RetrieveLoopState", 6: "RetrieveAndRunState"}, 12)
    assert render_status(stats, range(12), width=8) == "\n".join([
        "[   4.2s] active 5  done 1/12  waiting 6  error 0  rejected 0 launched 12",
        ".  not started 6   L  RetrieveLoopState 1   R  RetrieveAndRunState 2   "
        "U  UploadState 1   #  FinalState 1   x  ErrorState 1",
        " 0 #RUx.LR.",
        " 8 ....",
    ])


def test_explicit_actor_numbers_label_the_rows() -> None:
    stats = snapshot({1001: "ConfigState", 1003: "FinalState"}, 3)
    text = render_status(stats, [1003, 1001, 2000], width=2)
    assert text.splitlines()[2:] == ["1001 C#", "2000 ."]


STATE_NAMES = st.sampled_from([
    "ConfigState", "RetrieveAndRunState", "RetrieveLoopState", "UploadState", "FinalState",
    "TerminalState", "ErrorState", "NotStarted", "R", "Rx", "X", "x", "AaAa", "?", "Q1",
])
LEGEND_ENTRY = re.compile(r"^(\S)  (.+) (\d+)$")


@given(
    st.dictionaries(st.integers(0, 300), STATE_NAMES, max_size=60),
    st.sets(st.integers(0, 300), max_size=40),
    st.integers(1, 50),
)
def test_every_actor_has_one_cell_that_the_legend_explains(
    states: dict[int, str], unstarted: set[int], width: int
) -> None:
    actors = sorted(set(states) | unstarted)
    text = render_status(snapshot(states, len(actors)), actors, width=width)
    lines = text.split("\n")
    legend: dict[str, tuple[str, int]] = {}
    for entry in lines[1].split("   ") if lines[1] else []:
        found = LEGEND_ENTRY.match(entry)
        assert found, entry
        symbol, name, count = found.groups()
        assert symbol not in legend or symbol in (FINISHED, FAILED)
        legend.setdefault(symbol, (name, 0))
        legend[symbol] = (name, legend[symbol][1] + int(count))
    cells = ""
    for row, line in enumerate(lines[2:]):
        label, _, row_cells = line.lstrip().partition(" ")
        assert int(label) == actors[row * width]
        assert 0 < len(row_cells) <= width
        cells += row_cells
    assert len(cells) == len(actors)
    assert sum(count for _, count in legend.values()) == len(actors)
    by_symbol = Counter(cells)
    for actor, cell in zip(actors, cells, strict=True):
        assert cell in legend
        if actor not in states:
            assert cell == WAITING
        elif cell not in (FINISHED, FAILED):  # one letter per state name
            assert legend[cell][0] == states[actor]
    for symbol, (_, count) in legend.items():
        assert by_symbol[symbol] == count


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_view_draws_the_legend_and_the_grid() -> None:
    stream = Terminal()
    live = LiveStatus(stream, range(3))
    live.update(snapshot({0: "ConfigState", 2: "FinalState"}, 3))
    live.close()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())
    assert ".  not started 1   C  ConfigState 1   #  FinalState 1" in shown
    assert "0 C.#" in shown


def test_plain_stream_gets_the_counts_line() -> None:
    stream = io.StringIO()
    live = LiveStatus(stream, range(3))
    live.update(snapshot({0: "ConfigState"}, 3))
    live.close()
    assert stream.getvalue() == "[   4.2s] active 1  done 0/3  waiting 2  error 0  rejected 0 launched 3\n"
