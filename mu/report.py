"""What a run shows a person: live progress while it runs, and the final report.

On a terminal the live view (rich) is one line of counts and a compact grid with one cell
per actor, coloured by state (errors red, finished green); elsewhere (a log file, CI) it is
a plain status line every few seconds. The final report names every failed actor with the
state it failed in, the reason and why it was not retried, then the counts.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

from mu.coordinator import RunResult, Statistics

__all__ = ["LiveStatus", "final_report", "render_status"]

_PLAIN_EVERY = 5.0


def _counts(s: Statistics) -> str:
    launched = "" if s.launched is None else f" launched {s.launched}"
    return (
        f"[{s.elapsed:6.1f}s] active {s.active}  done {s.done}/{s.total}  waiting "
        f"{s.waiting}  error {s.errors}  rejected {s.rejected}{launched}"
    )


WAITING, FINISHED, FAILED = ".", "#", "x"
_FAILED_STATES = frozenset({"ErrorState", "TerminatedState", "NotStarted"})
_STYLES = {WAITING: "dim", FINISHED: "green", FAILED: "bold red"}


def _is_finished(state: str) -> bool:
    return state.startswith("Final") or state == "TerminalState"


def _symbols(states: Sequence[str]) -> dict[str, str]:
    """One symbol per state name: ``#`` finished, ``x`` failed, else a letter of the name
    (its capitals first, then its other letters), distinct from every other symbol."""
    symbols: dict[str, str] = {}
    taken = {WAITING, FINISHED, FAILED}
    for name in sorted(set(states)):
        if name in _FAILED_STATES:
            symbols[name] = FAILED
        elif _is_finished(name):
            symbols[name] = FINISHED
        else:
            capitals = [c for c in name if c.isupper()]
            others = [c.upper() for c in name if c.isalpha()] + [c.lower() for c in name]
            spare = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["?"]
            symbols[name] = next((c for c in capitals + others + spare if c not in taken), "?")
            taken.add(symbols[name])
    return symbols


def _status_parts(
    stats: Statistics, actors: Sequence[int] | None, width: int
) -> tuple[list[str], list[tuple[str, str]]]:
    """The header lines (counts, legend) and the grid rows as (label, cells)."""
    numbers = sorted(actors if actors is not None else stats.states)
    shown = {n: stats.states[n] for n in numbers if n in stats.states}
    symbols = _symbols(list(shown.values()))
    counts = Counter(shown.values())
    waiting = len(numbers) - len(shown)
    order = {WAITING: 0, FINISHED: 2, FAILED: 3}  # waiting first, then working, then ended
    names = sorted(counts, key=lambda n: (order.get(symbols[n], 1), symbols[n], n))
    legend = [f"{WAITING}  not started {waiting}"] if waiting else []
    legend += [f"{symbols[n]}  {n} {counts[n]}" for n in names]
    label = len(str(numbers[-1])) if numbers else 1
    cells = "".join(symbols[shown[n]] if n in shown else WAITING for n in numbers)
    rows = [
        (f"{numbers[i]:>{label}} ", cells[i : i + width]) for i in range(0, len(cells), width)
    ]
    return [_counts(stats), "   ".join(legend)], rows


def render_status(stats: Statistics, actors: Sequence[int] | None = None, width: int = 64) -> str:
    """The live view as text: counts, a legend with one entry per state, one cell per actor.

    A pure function of the coordinator's snapshot; the terminal view draws the same parts
    in colour. Rows are labelled with their first actor number, as the 2016 grid showed
    each actor's state::

        [   4.2s] active 2  done 1/4  waiting 1  error 0  rejected 0
        .  not started 1   R  RetrieveAndRunState 1   U  UploadState 1   #  FinalState 1
        0 #RU.

    ``.`` is an actor no worker has started yet, ``#`` a finished one, ``x`` a failed one;
    every other state gets a letter of its own name, which the legend spells out.

    Args:
        stats: the coordinator's snapshot (:meth:`~mu.coordinator.Coordinator.statistics`).
        actors: every actor number of the run; those without a state yet are drawn waiting.
            ``None``: the actors the snapshot names.
        width: cells per grid row.

    Returns:
        The lines, joined by newlines (no trailing newline).
    """
    header, rows = _status_parts(stats, actors, max(1, width))
    return "\n".join(header + [label + cells for label, cells in rows])


class LiveStatus:
    """The status callback for :class:`~mu.coordinator.Coordinator` (``status=``).

    Args:
        stream: where the view is drawn (a terminal gets the rich view).
        actors: every actor number of the run, for the grid.
    """

    def __init__(self, stream: TextIO, actors: Sequence[int] | None = None) -> None:
        self.stream = stream
        self.actors = actors
        self._live: Any = None
        self._next_plain = 0.0
        if stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=stream)
            self._live = Live(console=self._console, auto_refresh=False, transient=False)
            self._live.start()

    def update(self, stats: Statistics) -> None:
        if self._live is not None:
            self._live.update(self._render(stats), refresh=True)
        elif time.monotonic() >= self._next_plain:
            self._next_plain = time.monotonic() + _PLAIN_EVERY
            print(_counts(stats), file=self.stream, flush=True)

    def _render(self, stats: Statistics) -> Any:
        from rich.text import Text

        label = len(str(max(self.actors or stats.states or [0]))) + 1
        width = max(16, min(100, self._console.width - label))
        header, rows = _status_parts(stats, self.actors, width)
        text = Text("\n".join(header))
        for name, cells in rows:
            text.append("\n" + name)
            for cell, run in itertools.groupby(cells):  # one span per run of equal cells
                text.append("".join(run), style=_STYLES.get(cell, "yellow"))
        return text

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def final_report(result: RunResult, stream: TextIO, cost: str = "") -> None:
    """Print every failed actor (number, attempt, the state it failed in, the reason, and
    why it was not retried), every failed attempt that was retried and why, every rehearsal
    fault injected and what it led to, and the summary line: the counts, the wall time and
    ``cost`` (the bill, :meth:`mu.cost.RunBill.phrase`), if given. Attempts count from 1,
    as in the log and the run record."""
    for failed in result.failed:
        nth = f" attempt {failed.attempt}" if failed.attempt else ""
        why = f" ({failed.retry})" if failed.retry else ""
        print(f"mu: actor {failed.actor}{nth} failed in {failed.state}: {failed.error}{why}",
              file=stream)
    if result.launch_error:
        print(f"mu: launch: {result.launch_error}", file=stream)
    for attempt in result.retried:
        why = attempt.retry or "retried"
        print(f"mu: actor {attempt.actor} attempt {attempt.attempt} failed in "
              f"{attempt.state}: {attempt.error} ({why})", file=stream)
    for attempt in result.actors:
        if attempt.fault:
            outcome = "finished" if attempt.ok else f"failed in {attempt.state}: {attempt.error}"
            print(f"mu: fault: actor {attempt.actor} attempt {attempt.attempt} got "
                  f"[{attempt.fault}] and {outcome}", file=stream)
    launched = ""
    if result.launch:
        more = result.launched - result.launch.accepted
        launched = f", launched {result.launched}" + (
            f" ({more} for retries and stragglers)" if more > 0 else "")
    retried = f", {len(result.retried)} retried" if result.retried else ""
    print(
        f"mu: {result.done} done, {result.errors} error, {result.rejected} rejected"
        f"{retried}{launched}; {result.wall:.2f} s" + (f"; {cost}" if cost else ""),
        file=stream,
    )
