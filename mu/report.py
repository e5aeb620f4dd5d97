"""What a run shows a person: live progress while it runs, and the final report.

On a terminal the live view (rich) is one line of counts and a compact grid with one cell
per actor, coloured by state (errors red, finished green); elsewhere (a log file, CI) it is
a plain status line every few seconds. The final report names every failed actor with the
state it failed in, the reason and why it was not retried, then the counts.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from mu.coordinator import RunResult, Statistics

__all__ = ["LiveStatus", "final_report"]

_PLAIN_EVERY = 5.0


def _counts(s: Statistics) -> str:
    launched = "" if s.launched is None else f" launched {s.launched}"
    return (
        f"[{s.elapsed:6.1f}s] active {s.active}  done {s.done}/{s.total}  waiting "
        f"{s.waiting}  error {s.errors}  rejected {s.rejected}{launched}"
    )


class LiveStatus:
    """The status callback for :class:`~mu.coordinator.Coordinator` (``status=``)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._live: Any = None
        self._next_plain = 0.0
        if stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=stream), auto_refresh=False, transient=False)
            self._live.start()

    def update(self, stats: Statistics) -> None:
        if self._live is not None:
            self._live.update(self._render(stats), refresh=True)
        elif time.monotonic() >= self._next_plain:
            self._next_plain = time.monotonic() + _PLAIN_EVERY
            print(_counts(stats), file=self.stream, flush=True)

    def _render(self, stats: Statistics) -> Any:
        from rich.text import Text

        text = Text(_counts(stats) + "\n")
        for i, (_, state) in enumerate(sorted(stats.states.items())):
            if state in ("ErrorState", "TerminatedState", "NotStarted"):
                text.append("x", style="bold red")
            elif state.startswith("Final") or state == "TerminalState":
                text.append("#", style="green")
            else:
                text.append(state[:1] or "?", style="yellow")
            if i % 80 == 79:
                text.append("\n")
        return text

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def final_report(result: RunResult, stream: TextIO) -> None:
    """Print every failed actor (number, attempt, the state it failed in, the reason, and
    why it was not retried), every failed attempt that was retried and why, every rehearsal
    fault injected and what it led to, and the counts. Attempts count from 1, as in the log
    and the run record."""
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
        f"{retried}{launched}; {result.wall:.2f} s",
        file=stream,
    )
