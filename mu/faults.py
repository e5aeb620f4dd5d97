"""Fault injection for rehearsals: what goes wrong, where, decided by a seed.

Theory of operation
-------------------
A rehearsal run (``--faults crash=0.1,hang=0.02,drop=0.05,s3-error=0.02,duplicate=0.05,
seed=7``) makes workers misbehave the ways Lambda workers do. :func:`parse` turns the text
into a :class:`FaultSpec`; nothing is injected unless a run asks for it.

Each *attempt* of each actor gets its own plan, :meth:`FaultSpec.plan`, drawn from a random
generator seeded by ``(seed, actor, attempt)`` only, so a plan does not depend on which
worker arrived first or on timing: the same seed injects the same faults into the same
attempts, run after run.

* ``crash``, ``hang``, ``drop`` (probabilities, at most one per attempt): after ``after``
  further commands the worker exits at once (its process dies mid-state), stops answering
  (the ``-m`` deadline has to end it), or closes its connection without a word.
* ``s3-error``: the probability that any one S3 call of that attempt fails with a 503
  ``SlowDown`` before reaching S3 (the S3 client's own retries are expected to absorb it).
* ``duplicate``: the probability that the Lambda service (the emulator) delivers an Event
  invocation twice, as AWS may; the extra worker must be harmless.

The coordinator sends an attempt's plan as its first command, ``fault:<plan>``
(:meth:`Fault.command`; no response), and only to workers of a run that has faults, whose
payload says so (``faults: 1``); a worker outside such a run refuses the command.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Final

from mu.errors import ConfigError

__all__ = ["KINDS", "Fault", "FaultSpec", "parse"]

KINDS: Final = ("crash", "hang", "drop")
"""The faults that end an attempt, at most one per attempt."""

MAX_AFTER: Final = 40
"""A fault fires after 1 .. MAX_AFTER further commands (a job shorter than that may end first)."""


@dataclass(frozen=True)
class Fault:
    """One attempt's plan.

    Attributes:
        kind: ``crash``, ``hang``, ``drop``, or ``""`` for none.
        after: commands served after the plan arrives before the fault fires.
        s3_error: probability that one S3 call fails with 503 SlowDown.
        seed: seeds the worker's draws for S3 errors.
    """

    kind: str = ""
    after: int = 0
    s3_error: float = 0.0
    seed: int = 0

    def command(self) -> str:
        """The ``fault:`` command carrying this plan."""
        return f"fault:{self.kind}:{self.after}:{self.s3_error!r}:{self.seed}"

    @classmethod
    def from_args(cls, args: str) -> Fault:
        """Parse the arguments of a ``fault:`` command (what :meth:`command` wrote).

        Raises:
            ValueError: naming the malformed part.
        """
        parts = args.split(":")
        if len(parts) != 4:
            raise ValueError(f"expected fault:kind:after:s3_error:seed, got {args[:80]!r}")
        kind, after, s3_error, seed = parts
        if kind not in ("", *KINDS):
            raise ValueError(f"unknown fault {kind[:20]!r} (known: {', '.join(KINDS)})")
        try:
            fault = cls(kind, int(after), float(s3_error), int(seed))
        except ValueError:
            raise ValueError(f"malformed fault plan {args[:80]!r}") from None
        if fault.after < 0 or not 0.0 <= fault.s3_error <= 1.0:
            raise ValueError(f"fault plan out of range: {args[:80]!r}")
        return fault

    def __str__(self) -> str:
        parts = [f"{self.kind} after {self.after} commands"] if self.kind else []
        if self.s3_error:
            parts.append(f"s3-error {self.s3_error:g}")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class FaultSpec:
    """The faults a run injects (probabilities in [0, 1]) and the seed that places them."""

    crash: float = 0.0
    hang: float = 0.0
    drop: float = 0.0
    s3_error: float = 0.0
    duplicate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "seed":
                continue
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(
                    f"--faults {_spelling(f.name)}={value:g}: a probability must be in [0, 1]"
                )
        if self.crash + self.hang + self.drop > 1.0:
            raise ConfigError("--faults: crash + hang + drop must not exceed 1")

    def plan(self, actor: int, attempt: int) -> Fault:
        """The plan for attempt ``attempt`` (0 = first) of ``actor``; the same every run."""
        rng = random.Random(f"{self.seed}:{actor}:{attempt}")
        draw = rng.random()
        after = rng.randint(1, MAX_AFTER)
        kind = ""
        edge = 0.0
        for name in KINDS:
            edge += getattr(self, name)
            if draw < edge:
                kind = name
                break
        seed = rng.getrandbits(32)
        return Fault(kind, after if kind else 0, self.s3_error, seed)

    @property
    def for_workers(self) -> bool:
        """Whether workers have anything to inject (else no ``fault:`` is sent)."""
        return any(getattr(self, name) for name in (*KINDS, "s3_error"))

    def __str__(self) -> str:
        return ",".join(
            f"{_spelling(f.name)}={getattr(self, f.name):g}" for f in fields(self)
            if getattr(self, f.name) or f.name == "seed"
        )


def _spelling(name: str) -> str:
    return name.replace("_", "-")


def parse(text: str) -> FaultSpec:
    """Parse ``crash=0.1,hang=0.02,drop=0.05,s3-error=0.02,duplicate=0.05,seed=7``.

    Raises:
        ConfigError: naming the unknown name or the malformed value.
    """
    known = {_spelling(f.name): f.name for f in fields(FaultSpec)}
    values: dict[str, float | int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ConfigError(
                f"--faults: {part!r} is not one of {', '.join(n + '=' for n in known)}"
            )
        try:
            values[known[name]] = int(value) if name == "seed" else float(value)
        except ValueError:
            kind = "an integer" if name == "seed" else "a number"
            raise ConfigError(f"--faults: {name}={value!r} is not {kind}") from None
    return FaultSpec(**values)  # type: ignore[arg-type]
