"""Timeline plot of a run record (``-O run.jsonl``): one bar per worker, coloured by state.

Theory of operation
-------------------
Each line of the record is one actor attempt: ``{"actor": n, "attempt": k, "state":
final_state, "ok": bool, "error": reason | null, "timestamps": [[seconds_since_start,
state_name], ...]}`` (attempts count from 1; a retried actor has a line per attempt; a
failed one may say ``"retry"``: why it was or was not retried). A state lasts from its
timestamp to the next one; the final (terminal) state is drawn as a marker at its time:
a dot when the actor finished, a red cross when it failed. Rows are sorted by actor number
and attempt. matplotlib comes from the ``plot`` extra and is imported only here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from mu.errors import ConfigError

__all__ = ["Attempt", "default_title", "plot_timeline", "read_record"]


@dataclass(frozen=True)
class Attempt:
    """One actor attempt from the run record."""

    actor: int
    attempt: int
    ok: bool
    state: str
    error: str | None
    timestamps: tuple[tuple[float, str], ...]
    dollars: Decimal | None = None  # its bill, when the run priced it
    billed_from: str = ""  # "REPORT" or "upper bound"
    kind: str = ""  # work, retry or backup (mu.cost.KINDS), when the run priced it

    def cost_label(self) -> str:
        """What the attempt cost, for ``mu plot --cost``: ``$0.000123 work``, with ``<=``
        when it is an upper bound; "" when the record carries no bill.

        >>> Attempt(0, 1, True, "FinalState", None, (), Decimal("0.5"), "upper bound",
        ...         "retry").cost_label()
        '<=$0.50 retry'
        """
        if self.dollars is None:
            return ""
        from mu.cost import money

        bound = "<=" if self.billed_from != "REPORT" else ""
        return f"{bound}{money(self.dollars)} {self.kind}".rstrip()


def read_record(path: str | os.PathLike[str]) -> list[Attempt]:
    """Parse a run record.

    Raises:
        ConfigError: the file is missing, or a line is not a record object (named by number).
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read run record {os.fspath(path)!r}: {exc.strerror}") from exc
    attempts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj: dict[str, Any] = json.loads(line)
            attempts.append(
                Attempt(
                    actor=int(obj["actor"]),
                    attempt=int(obj.get("attempt", 0)),
                    ok=bool(obj["ok"]),
                    state=str(obj["state"]),
                    error=obj.get("error"),
                    timestamps=tuple((float(t), str(s)) for t, s in obj["timestamps"]),
                    dollars=Decimal(str(obj["cost"]["dollars"])) if "cost" in obj else None,
                    billed_from=str(obj["cost"].get("source", "")) if "cost" in obj else "",
                    kind=str(obj["cost"].get("kind", "")) if "cost" in obj else "",
                )
            )
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            raise ConfigError(
                f"{os.fspath(path)} line {number} is not a run record entry: {exc!r}"
            ) from exc
    if not attempts:
        raise ConfigError(f"run record {os.fspath(path)!r} has no entries")
    return sorted(attempts, key=lambda a: (a.actor, a.attempt))


def default_title(attempts: list[Attempt]) -> str:
    """The plot's title: counts, and the run's cost when the record carries it."""
    failed = sum(1 for a in attempts if not a.ok)
    title = f"{len(attempts)} workers, {failed} failed"
    priced = [a for a in attempts if a.dollars is not None]
    if priced:
        from mu.cost import money

        total = sum((a.dollars for a in priced if a.dollars is not None), Decimal(0))
        bounded = sum(1 for a in priced if a.billed_from != "REPORT")
        title += f", cost {money(total)}" + (
            f" ({bounded} of {len(priced)} upper bounds)" if bounded else "")
    return title


def plot_timeline(
    record: str | os.PathLike[str], output: str | os.PathLike[str], title: str | None = None,
    cost: bool = False,
) -> Path:
    """Draw ``record`` as a timeline PNG at ``output``; with ``cost``, each bar ends with
    what its attempt cost (:meth:`Attempt.cost_label`).

    Returns:
        The path written.

    Raises:
        ConfigError: matplotlib is missing, or the record is unreadable.
    """
    attempts = read_record(record)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ConfigError(
            "mu plot needs matplotlib: pip install 'mu[plot]' (or pip install matplotlib)"
        ) from exc

    states: list[str] = []
    for a in attempts:
        for _, name in a.timestamps[:-1]:
            if name not in states:
                states.append(name)
    cmap = plt.get_cmap("tab20" if len(states) > 10 else "tab10")
    colour = {name: cmap(i % cmap.N) for i, name in enumerate(states)}

    # tall enough for one bar per attempt and for the legend's one line per state
    height = max(2.5, 0.19 * len(states) + 1.2, min(0.28 * len(attempts) + 1.5, 40))
    fig, ax = plt.subplots(figsize=(11, height), dpi=110)
    end = 0.0
    for row, a in enumerate(attempts):
        spans = list(zip(a.timestamps, a.timestamps[1:], strict=False))
        for (start, name), (stop, _) in spans:
            ax.barh(row, max(stop - start, 1e-4), left=start, color=colour[name], height=0.8)
        t_end = a.timestamps[-1][0] if a.timestamps else 0.0
        end = max(end, t_end)
        label = a.cost_label() if cost else ""
        if a.ok:
            ax.plot([t_end], [row], marker="o", color="black", markersize=3)
        else:
            ax.plot([t_end], [row], marker="x", color="red", markersize=8, mew=2)
            label = f"{label}  {(a.error or a.state)[:60]}".strip()
        if label:
            ax.annotate(
                label, (t_end, row), xytext=(6, -3), textcoords="offset points",
                color="black" if a.ok else "red", fontsize=7,
            )
    failed = sum(1 for a in attempts if not a.ok)
    labels = [f"{a.actor}" + (f" #{a.attempt}" if a.attempt > 1 else "") for a in attempts]
    ax.set_yticks(range(len(attempts)))
    ax.set_yticklabels(labels, fontsize=7 if len(attempts) > 30 else 9)
    ax.invert_yaxis()
    ax.set_xlim(0, end * (1.35 if failed or cost else 1.05) if end > 0 else 1)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("actor")
    ax.set_title(title or default_title(attempts))
    handles = [Patch(color=colour[s], label=s) for s in states]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  frameon=False, title="state", title_fontsize=8)
    fig.tight_layout()
    out = Path(output)
    fig.savefig(out)
    plt.close(fig)
    return out
