"""What a run costs: the price table, the estimate before a launch, the bill after it.

Theory of operation
-------------------
Everything here is pure: numbers in, numbers out; no clock, no socket, no AWS call.

- **Prices** (:class:`Prices`) are data: ``mu/prices.json`` in the package names its date,
  its source and its tier (the first tier only: volume discounts are not applied, nor is
  the free tier taken off). ``--price-file FILE`` gives another file of the same shape.
  A region the table does not list is priced with its ``default`` entry, and the estimate
  says so. Amounts are :class:`~decimal.Decimal`, read from the JSON strings exactly, so a
  bill is the hand computation to the last digit.
- **Usage** (:class:`Usage`) is what is billed: per region, the invocations, the GB-seconds
  (memory in MB / 1024 times seconds, as Lambda bills) and the S3 requests by kind.
  :func:`price` turns a usage into :class:`Dollars`.
- **The estimate** (:func:`estimate`) is the usage of a plan (:class:`Plan`): every worker
  runs for the same assumed duration, invocations go round-robin over the regions as the
  launcher sends them, and the S3 requests are the job's count per worker.
- **Durations from an earlier run** (:func:`durations_from_record`): ``--estimate-from
  RUN.jsonl`` takes the per-state durations of a run record (``-O``); a state entered once
  per worker counts once, a state entered more often is per-frame work and is scaled by
  frames per worker now / frames per worker then.
- **The bill** (:func:`parse_report`, :func:`bill`): each attempt's Lambda ``REPORT`` line
  gives its billed duration and memory size; an attempt without one is billed for the
  coordinator's view of its lifetime at the function's memory, an upper bound (the worker
  was alive at least from launch to its last message), and counted apart as such.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mu.errors import ConfigError

__all__ = [
    "ARCHITECTURES",
    "BEFORE_HELLO",
    "KINDS",
    "PRICE_FILE",
    "S3_KINDS",
    "AttemptBill",
    "Dollars",
    "JobCost",
    "Plan",
    "Prices",
    "Report",
    "Usage",
    "bill",
    "breakdown",
    "describe",
    "durations_from_record",
    "estimate",
    "gb_seconds",
    "kind_of",
    "load_prices",
    "money",
    "parse_report",
    "price",
    "read_record_lines",
    "record_frames",
    "summary",
]

PRICE_FILE = Path(__file__).with_name("prices.json")
"""The price table shipped in the package."""

ARCHITECTURES = ("x86_64", "arm64")
BEFORE_HELLO = "(launch to hello)"
"""The part of an attempt before its first state: the cold start and the dial back."""
S3_KINDS = ("GET", "PUT", "LIST")


@dataclass(frozen=True)
class RegionPrices:
    """One region's first-tier prices, in the table's currency."""

    gb_second: Mapping[str, Decimal]  # architecture -> per GB-second
    request: Decimal  # per invocation
    s3_per_1000: Mapping[str, Decimal]  # GET/PUT/LIST -> per 1,000 requests


@dataclass(frozen=True)
class Prices:
    """A price table (see :func:`load_prices`)."""

    as_of: str
    source: str
    tier: str
    currency: str
    default: RegionPrices
    regions: Mapping[str, RegionPrices]
    path: str = ""

    def region(self, name: str) -> RegionPrices:
        """The prices of ``name`` (the default entry for a region not listed)."""
        return self.regions.get(name, self.default)

    def listed(self, name: str) -> bool:
        return name in self.regions

    def describe(self) -> str:
        """One line: the table's date, source and tier."""
        return f"prices as of {self.as_of} ({self.currency}, {self.tier}; {self.source})"


def _amount(value: Any, where: str) -> Decimal:
    if not isinstance(value, str | int):
        raise ConfigError(f"{where} must be a number in a string, got {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{where} is not a number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where} must be a price >= 0, got {value!r}")
    return amount


def _region(obj: Any, base: RegionPrices | None, where: str) -> RegionPrices:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be an object")
    known = {"lambda_gb_second", "lambda_request", "s3_per_1000"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ConfigError(f"{where} has unknown field(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")

    def table(name: str, keys: Sequence[str], inherited: Mapping[str, Decimal] | None
              ) -> dict[str, Decimal]:
        given = obj.get(name)
        if given is None:
            if inherited is None:
                raise ConfigError(f"{where} has no {name}")
            return dict(inherited)
        if not isinstance(given, dict):
            raise ConfigError(f"{where}.{name} must be an object")
        out = dict(inherited or {})
        for key, value in given.items():
            if key not in keys:
                raise ConfigError(f"{where}.{name} has unknown key {key!r} "
                                  f"(known: {', '.join(keys)})")
            out[key] = _amount(value, f"{where}.{name}.{key}")
        missing = [k for k in keys if k not in out]
        if missing:
            raise ConfigError(f"{where}.{name} has no {', '.join(missing)}")
        return out

    request = obj.get("lambda_request")
    return RegionPrices(
        gb_second=table("lambda_gb_second", ARCHITECTURES, base.gb_second if base else None),
        request=_amount(request, f"{where}.lambda_request") if request is not None
        else (base.request if base else _amount(None, f"{where}.lambda_request")),
        s3_per_1000=table("s3_per_1000", S3_KINDS, base.s3_per_1000 if base else None),
    )


def load_prices(path: str | Path | None = None) -> Prices:
    """Read a price table (default: the one in the package).

    Raises:
        ConfigError: the file cannot be read, is not JSON, or lacks a field (named).
    """
    where = str(path or PRICE_FILE)
    try:
        text = Path(where).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read price file {where!r}: {exc.strerror}") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"price file {where!r} is not JSON: {exc.msg} at line {exc.lineno}"
                          ) from exc
    if not isinstance(obj, dict):
        raise ConfigError(f"price file {where!r} must hold a JSON object")
    try:
        for name in ("as_of", "source", "tier", "currency"):
            if not isinstance(obj.get(name), str) or not obj[name]:
                raise ConfigError(f"has no {name!r} (a non-empty string)")
        default = _region(obj.get("default"), None, "default")
        regions = obj.get("regions", {})
        if not isinstance(regions, dict):
            raise ConfigError("'regions' must be an object")
        table = {name: _region(entry, default, f"regions.{name}")
                 for name, entry in regions.items()}
    except ConfigError as exc:
        raise ConfigError(f"price file {where!r}: {exc}") from None
    return Prices(obj["as_of"], obj["source"], obj["tier"], obj["currency"], default, table,
                  where)


def gb_seconds(memory_mb: int | Decimal, seconds: Decimal) -> Decimal:
    """Lambda's GB-seconds: memory in MB / 1024 times the billed seconds."""
    return Decimal(memory_mb) / Decimal(1024) * seconds


@dataclass
class Usage:
    """What is billed in one region."""

    invocations: int = 0
    gb_seconds: Decimal = Decimal(0)
    s3: dict[str, int] = field(default_factory=lambda: dict.fromkeys(S3_KINDS, 0))

    def add(self, other: Usage) -> None:
        self.invocations += other.invocations
        self.gb_seconds += other.gb_seconds
        for kind in S3_KINDS:
            self.s3[kind] += other.s3[kind]


@dataclass(frozen=True)
class Dollars:
    """A usage priced: requests, compute and S3, and their total."""

    requests: Decimal
    compute: Decimal
    s3: Decimal

    @property
    def total(self) -> Decimal:
        return self.requests + self.compute + self.s3

    def __add__(self, other: Dollars) -> Dollars:
        return Dollars(self.requests + other.requests, self.compute + other.compute,
                       self.s3 + other.s3)


ZERO = Dollars(Decimal(0), Decimal(0), Decimal(0))


def price(usage: Mapping[str, Usage], prices: Prices, architecture: str = "x86_64") -> Dollars:
    """The dollars of a usage per region at first-tier prices."""
    total = ZERO
    for region, use in usage.items():
        p = prices.region(region)
        total += Dollars(
            requests=p.request * use.invocations,
            compute=p.gb_second[architecture] * use.gb_seconds,
            s3=sum((p.s3_per_1000[k] * use.s3[k] / 1000 for k in S3_KINDS), Decimal(0)),
        )
    return total


@runtime_checkable
class JobCost(Protocol):
    """A job that can say what each worker does that is billed (optional for a job).

    ``frames_per_worker``: the unit per-frame states repeat over (None: no such unit);
    ``s3_requests()``: S3 requests per worker by kind, and those the coordinator makes
    for the whole run (listings at preflight) by kind.
    """

    @property
    def frames_per_worker(self) -> int | None: ...

    def s3_requests(self, actors: int) -> tuple[dict[str, int], dict[str, int]]: ...


@dataclass(frozen=True)
class Plan:
    """What a run will launch, for :func:`estimate`.

    Attributes:
        invocations: workers launched (actors plus spares).
        regions: invoked round-robin, in order.
        memory_mb: the function's memory.
        seconds: the assumed duration of one invocation.
        per_worker_s3: S3 requests each worker makes, by kind.
        coordinator_s3: S3 requests the coordinator makes, by kind (first region).
    """

    invocations: int
    regions: tuple[str, ...]
    memory_mb: int
    seconds: Decimal
    per_worker_s3: Mapping[str, int] = field(default_factory=dict)
    coordinator_s3: Mapping[str, int] = field(default_factory=dict)


def estimate(plan: Plan) -> dict[str, Usage]:
    """The usage per region of ``plan`` (invocation ``i`` goes to region ``i mod R``)."""
    usage = {r: Usage() for r in plan.regions}
    count = len(plan.regions)
    for index, region in enumerate(plan.regions):
        n = plan.invocations // count + (1 if index < plan.invocations % count else 0)
        use = usage[region]
        use.invocations += n
        use.gb_seconds += gb_seconds(plan.memory_mb, plan.seconds) * n
        for kind, per in plan.per_worker_s3.items():
            use.s3[kind] += per * n
    for kind, n in plan.coordinator_s3.items():
        usage[plan.regions[0]].s3[kind] += n
    return usage


def durations_from_record(lines: Iterable[Mapping[str, Any]], frames_then: int | None,
                          frames_now: int | None) -> tuple[Decimal, dict[str, Decimal]]:
    """The per-worker duration an earlier run's record predicts, and its per-state parts.

    Only attempts that finished count. Per state: the mean time per entry, times the mean
    entries per attempt (with :data:`BEFORE_HELLO`, from the launch call to the hello, when
    the record has it); a state entered more than once per attempt is per-frame work and
    is scaled by ``frames_now / frames_then`` (when both are known).

    Raises:
        ConfigError: no finished attempt in the record.
    """
    spent: dict[str, float] = {}
    entries: dict[str, int] = {}
    attempts = 0
    for line in lines:
        stamps = line.get("timestamps") or []
        if not line.get("ok") or len(stamps) < 2:
            continue
        attempts += 1
        if "launched" in line:  # cold start and dial back (and the launch call: an over-count)
            before = max(0.0, float(stamps[0][0]) - float(line["launched"]))
            spent[BEFORE_HELLO] = spent.get(BEFORE_HELLO, 0.0) + before
            entries[BEFORE_HELLO] = entries.get(BEFORE_HELLO, 0) + 1
        for (t, name), (t_next, _) in itertools.pairwise(stamps):
            spent[name] = spent.get(name, 0.0) + max(0.0, float(t_next) - float(t))
            entries[name] = entries.get(name, 0) + 1
    if not attempts:
        raise ConfigError("the run record has no finished attempt to take durations from")
    scale = Decimal(1)
    if frames_then and frames_now:
        scale = Decimal(frames_now) / Decimal(frames_then)
    parts: dict[str, Decimal] = {}
    for name, total in spent.items():
        per_attempt = Decimal(repr(total)) / attempts
        parts[name] = per_attempt * scale if entries[name] > attempts else per_attempt
    return sum(parts.values(), Decimal(0)), parts


# -- the bill ------------------------------------------------------------------------------

_REPORT = re.compile(r"^REPORT RequestId: (?P<id>\S+)(?P<rest>.*)$", re.S)
_FIELD = re.compile(r"(?P<name>[A-Za-z ]+): (?P<value>[\d.]+) (?P<unit>ms|MB)")


@dataclass(frozen=True)
class Report:
    """Lambda's ``REPORT`` line of one invocation."""

    request_id: str
    duration_ms: Decimal
    billed_ms: int
    memory_mb: int
    max_memory_mb: int
    init_ms: Decimal | None = None

    @property
    def gb_seconds(self) -> Decimal:
        return gb_seconds(self.memory_mb, Decimal(self.billed_ms) / 1000)


def parse_report(message: str) -> Report | None:
    """Parse ``REPORT RequestId: ID\\tDuration: X ms\\tBilled Duration: Y ms\\t...``.

    Returns None for any other line (or a REPORT missing its billed duration or memory).

    >>> parse_report("REPORT RequestId: r1\\tDuration: 12.34 ms\\tBilled Duration: 13 ms\\t"
    ...              "Memory Size: 1536 MB\\tMax Memory Used: 60 MB\\t").billed_ms
    13
    """
    match = _REPORT.match(message.strip())
    if not match:
        return None
    fields = {m["name"].strip(): Decimal(m["value"]) for m in _FIELD.finditer(match["rest"])}
    try:
        return Report(
            request_id=match["id"],
            duration_ms=fields.get("Duration", Decimal(0)),
            billed_ms=int(fields["Billed Duration"]),
            memory_mb=int(fields["Memory Size"]),
            max_memory_mb=int(fields.get("Max Memory Used", 0)),
            init_ms=fields.get("Init Duration"),
        )
    except KeyError:
        return None


def ceil_ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up (as Lambda bills)."""
    return max(1, math.ceil(seconds * 1000 - 1e-9))


def money(amount: Decimal) -> str:
    """Dollars to a cent, or to a millionth below one cent."""
    return f"${amount:.2f}" if amount >= Decimal("0.01") or amount == 0 else f"${amount:.6f}"


def describe(usage: Mapping[str, Usage], prices: Prices, architecture: str = "x86_64"
             ) -> list[str]:
    """Lines for an estimate or a bill: invocations, GB-seconds, S3 requests, dollars."""
    total = Usage()
    for use in usage.values():
        total.add(use)
    dollars = price(usage, prices, architecture)
    s3 = ", ".join(f"{total.s3[k]} {k}" for k in S3_KINDS)
    lines = [
        f"invocations: {total.invocations}",
        f"GB-seconds: {total.gb_seconds:.3f} ({architecture})",
        f"S3 requests: {s3}",
        f"dollars: {money(dollars.total)} (Lambda requests {money(dollars.requests)}, "
        f"compute {money(dollars.compute)}, S3 {money(dollars.s3)})",
    ]
    unlisted = [r for r in usage if not prices.listed(r)]
    if unlisted:
        lines.append(f"note: {', '.join(unlisted)} not in the price table: priced with its "
                     "default entry")
    lines.append(prices.describe())
    return lines


def record_frames(lines: Iterable[Mapping[str, Any]]) -> int | None:
    """Frames per worker of the run that wrote a record: its ``frames`` field, else the
    fewest entries per finished attempt of a state entered more than once (a per-frame
    state); None when no state repeats."""
    fewest: int | None = None
    for line in lines:
        if isinstance(line.get("frames"), int):
            return int(line["frames"])
        if not line.get("ok"):
            continue
        counts: dict[str, int] = {}
        for _t, name in (line.get("timestamps") or [])[:-1]:
            counts[name] = counts.get(name, 0) + 1
        repeats = [n for n in counts.values() if n > 1]
        if repeats:
            fewest = min(repeats) if fewest is None else min(fewest, *repeats)
    return fewest


def read_record_lines(path: str) -> list[dict[str, Any]]:
    """The JSON objects of a run record (``-O``).

    Raises:
        ConfigError: unreadable, or a line that is not a JSON object (named by number).
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read run record {path!r}: {exc.strerror}") from exc
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise ConfigError(f"run record {path!r} line {number} is not a JSON object")
        out.append(obj)
    return out


# -- the bill of a run ----------------------------------------------------------------------

KINDS = ("work", "retry", "backup")
"""How an attempt is counted: the attempt that ended its actor, a failed attempt that was
retried, a speculative twin that lost (or whose twin won)."""


@dataclass(frozen=True)
class AttemptBill:
    """What one attempt cost (Lambda only: requests and compute)."""

    actor: int
    attempt: int
    kind: str  # one of KINDS
    source: str  # "REPORT" or "upper bound"
    billed_ms: int
    memory_mb: int
    dollars: Decimal
    max_memory_mb: int | None = None
    init_ms: Decimal | None = None

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "source": self.source,
                               "billed_ms": self.billed_ms, "memory_mb": self.memory_mb,
                               "dollars": str(self.dollars)}
        if self.max_memory_mb is not None:
            out["max_memory_mb"] = self.max_memory_mb
        if self.init_ms is not None:
            out["init_ms"] = str(self.init_ms)
        return out


def kind_of(line: Mapping[str, Any], final: bool) -> str:
    """``work`` for the attempt that ended its actor, ``backup`` for a twin superseded by
    the other, else ``retry``."""
    if final:
        return "work"
    return "backup" if "supersed" in str(line.get("error") or "") else "retry"


def bill(lines: Sequence[Mapping[str, Any]], reports: Mapping[str, Report], memory_mb: int,
         prices: Prices, region: str, architecture: str = "x86_64") -> list[AttemptBill]:
    """Each attempt of a run record priced: from its REPORT when one is known by its request
    id, else from the coordinator's view (``launched`` to ``ended``) at ``memory_mb``, an
    upper bound. Prices are ``region``'s (the first region of the run)."""
    final: dict[int, int] = {}
    for index, line in enumerate(lines):
        actor = int(line["actor"])
        if actor not in final or not lines[final[actor]].get("ok"):
            final[actor] = index
    p = prices.region(region)
    out = []
    for index, line in enumerate(lines):
        if not int(line.get("attempt", 0)):
            continue  # no worker ever took the actor: nothing ran
        report = reports.get(str(line.get("request_id") or ""))
        if report is not None:
            billed, memory, source = report.billed_ms, report.memory_mb, "REPORT"
        else:
            span = float(line.get("ended", 0.0)) - float(line.get("launched", 0.0))
            billed, memory, source = ceil_ms(max(span, 0.0)), memory_mb, "upper bound"
        dollars = p.request + p.gb_second[architecture] * gb_seconds(
            memory, Decimal(billed) / 1000)
        out.append(AttemptBill(
            int(line["actor"]), int(line.get("attempt", 0)), kind_of(line, final[
                int(line["actor"])] == index), source, billed, memory, dollars,
            report.max_memory_mb if report else None, report.init_ms if report else None))
    return out


def summary(bills: Sequence[AttemptBill], prices: Prices, unbilled: int = 0) -> str:
    """The one cost line of a run."""
    total = sum((b.dollars for b in bills), Decimal(0))
    gbs = sum((gb_seconds(b.memory_mb, Decimal(b.billed_ms) / 1000) for b in bills), Decimal(0))
    parts = []
    for kind in KINDS:
        chosen = [b for b in bills if b.kind == kind]
        if chosen:
            parts.append(f"{kind} {money(sum((b.dollars for b in chosen), Decimal(0)))} "
                         f"({len(chosen)})")
    bounded = sum(1 for b in bills if b.source != "REPORT")
    how = (f"{len(bills) - bounded} from REPORT lines" + (
        f", {bounded} upper bound(s) from the coordinator's view of the worker's lifetime "
        "(no REPORT found)" if bounded else ""))
    extra = (f"; {unbilled} launched worker(s) took no actor (spares, late arrivals): not "
             "billed here" if unbilled > 0 else "")
    return (f"mu: cost {money(total)} for {len(bills)} invocation(s), {gbs:.3f} GB-s "
            f"({', '.join(parts) or 'nothing ran'}); {how}; Lambda only, first-tier prices "
            f"as of {prices.as_of}{extra}")


def breakdown(lines: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Decimal],
                                                           dict[str, Decimal], list[str]]:
    """A priced run record (lines with ``cost``) by state, by kind, and one row per attempt.

    An attempt's dollars are shared among its states by the time each lasted in the
    coordinator's view, from its launch (:data:`BEFORE_HELLO` until the first state) to
    its last state's start.

    Raises:
        ConfigError: no line carries a cost.
    """
    by_state: dict[str, Decimal] = {}
    by_kind: dict[str, Decimal] = {}
    rows: list[str] = []
    for line in lines:
        cost = line.get("cost")
        if not isinstance(cost, dict):
            continue
        dollars = Decimal(str(cost["dollars"]))
        kind = str(cost.get("kind", "work"))
        by_kind[kind] = by_kind.get(kind, Decimal(0)) + dollars
        stamps = [(Decimal(repr(float(t))), str(name)) for t, name in line.get("timestamps", [])]
        start = Decimal(repr(float(line.get("launched", 0.0))))
        parts: list[tuple[str, Decimal]] = []
        if stamps:
            parts.append((BEFORE_HELLO, max(Decimal(0), stamps[0][0] - start)))
            parts += [(name, max(Decimal(0), t_next - t))
                      for (t, name), (t_next, _) in itertools.pairwise(stamps)]
        whole = sum((d for _, d in parts), Decimal(0))
        for name, spent in parts:
            share = dollars * spent / whole if whole else Decimal(0)
            by_state[name] = by_state.get(name, Decimal(0)) + share
        if not whole:
            by_state[BEFORE_HELLO] = by_state.get(BEFORE_HELLO, Decimal(0)) + dollars
        rows.append(f"actor {line['actor']} attempt {line.get('attempt', 0)}: {kind}, "
                    f"{money(dollars)} ({cost.get('billed_ms')} ms billed at "
                    f"{cost.get('memory_mb')} MB, from {cost.get('source')})")
    if not rows:
        raise ConfigError("the run record carries no cost: it was written without the bill "
                          "(by an older mu, or by a run that launched nothing)")
    return by_state, by_kind, rows
