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
  (memory in MB / 1024 times seconds, as Lambda bills, at the price of the region's
  function's architecture) and the S3 requests by kind. :func:`price` turns a usage into
  :class:`Dollars`.
- **The estimate** (:func:`estimate`) is the usage of a plan (:class:`Plan`): the function's
  settings per region (:class:`~mu.launch.FunctionSettings`: memory, timeout, architecture,
  as deployed), every worker running for the same assumed duration (else its function's
  timeout), invocations round-robin over the regions as the launcher sends them, and the S3
  requests the job counts, in the bucket's region.
- **Durations from an earlier run** (:func:`durations_from_record`): ``--estimate-from
  RUN.jsonl`` takes the per-state durations of a run record (``-O``); a state entered once
  per worker counts once, a state entered more often is per-frame work and is scaled by
  frames per worker now / frames per worker then.
- **The bill** (:func:`parse_report`, :func:`bill`, :func:`spares`, :class:`RunBill`):
  each attempt's Lambda ``REPORT`` line gives its billed duration and memory size, priced
  in the region whose logs held it; an attempt without one is billed for the coordinator's
  view of its lifetime (from the launch call to its end, which holds the whole invocation)
  at the function's memory in the dearest region of the run, an upper bound, counted apart
  as such. Its worker's S3 transfers (the ``retrieve``/``upload`` answers the coordinator
  saw) are priced in the bucket's region. Invocations are told apart by kind
  (:data:`KINDS`): the work, retried attempts, speculative backups, and spares (workers that
  took no actor). The coordinator's own S3 requests are the job's count.
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
from mu.launch import FunctionSettings

__all__ = [
    "ARCHITECTURES",
    "BEFORE_HELLO",
    "COORDINATOR_S3",
    "KINDS",
    "PRICE_FILE",
    "S3_KINDS",
    "SPARE",
    "WORKER_S3",
    "AttemptBill",
    "Dollars",
    "JobCost",
    "Plan",
    "Prices",
    "Report",
    "RunBill",
    "Usage",
    "bill",
    "breakdown",
    "cost_lines",
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
    "s3_dollars",
    "spares",
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
    architecture: str = "x86_64"  # the region's function's: it prices the GB-seconds

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


def price(usage: Mapping[str, Usage], prices: Prices) -> Dollars:
    """The dollars of a usage per region at first-tier prices (GB-seconds at the price of
    each region's architecture)."""
    total = ZERO
    for region, use in usage.items():
        p = prices.region(region)
        total += Dollars(
            requests=p.request * use.invocations,
            compute=p.gb_second[use.architecture] * use.gb_seconds,
            s3=s3_dollars(use.s3, prices, region),
        )
    return total


def s3_dollars(counts: Mapping[str, int], prices: Prices, region: str) -> Decimal:
    """The price of S3 requests by kind in ``region``."""
    p = prices.region(region).s3_per_1000
    return sum((p[k] * counts.get(k, 0) / 1000 for k in S3_KINDS), Decimal(0))


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
        regions: invoked round-robin, in order; the first holds the bucket.
        functions: the function's settings in each region (memory, timeout, architecture).
        seconds: the assumed duration of one invocation (None: each region's function
            timeout, an upper bound).
        per_worker_s3: S3 requests each worker that takes an actor makes, by kind (in the
            bucket's region).
        coordinator_s3: S3 requests the coordinator makes, by kind (the bucket's region).
        spares: how many of the invocations are spares (``-X``), which make no S3 request
            unless they stand in for a worker.
    """

    invocations: int
    regions: tuple[str, ...]
    functions: Mapping[str, FunctionSettings]
    seconds: Decimal | None = None
    per_worker_s3: Mapping[str, int] = field(default_factory=dict)
    coordinator_s3: Mapping[str, int] = field(default_factory=dict)
    spares: int = 0


def estimate(plan: Plan) -> dict[str, Usage]:
    """The usage per region of ``plan``: invocation ``i`` runs in region ``i mod R``, every
    S3 request is made in the bucket's region (the first)."""
    usage = {r: Usage(architecture=plan.functions[r].architecture) for r in plan.regions}
    count = len(plan.regions)
    bucket = usage[plan.regions[0]]
    for index, region in enumerate(plan.regions):
        n = plan.invocations // count + (1 if index < plan.invocations % count else 0)
        function = plan.functions[region]
        seconds = plan.seconds if plan.seconds is not None else Decimal(function.timeout_s)
        usage[region].invocations += n
        usage[region].gb_seconds += gb_seconds(function.memory_mb, seconds) * n
    for kind, per in plan.per_worker_s3.items():
        bucket.s3[kind] += per * max(0, plan.invocations - plan.spares)
    for kind, n in plan.coordinator_s3.items():
        bucket.s3[kind] += n
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


def describe(usage: Mapping[str, Usage], prices: Prices) -> list[str]:
    """Lines for an estimate: invocations, GB-seconds, S3 requests, dollars."""
    total = Usage()
    for use in usage.values():
        total.add(use)
    dollars = price(usage, prices)
    s3 = ", ".join(f"{total.s3[k]} {k}" for k in S3_KINDS)
    architectures = ", ".join(dict.fromkeys(use.architecture for use in usage.values()))
    lines = [
        f"invocations: {total.invocations}",
        f"GB-seconds: {total.gb_seconds:.3f} ({architectures})",
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

KINDS = ("work", "retry", "backup", "spare")
"""How an invocation is counted: the attempt that ended its actor, a failed attempt that
was retried, a speculative twin that lost (or whose twin won), a worker that took no actor
(a spare, a late arrival, a duplicated delivery)."""

SPARE = "(spare: no actor)"
"""The state a spare's dollars go to in :func:`breakdown`."""
WORKER_S3 = "(workers' S3 requests)"
"""Where :func:`breakdown` puts the attempts' S3 dollars (not shared among states: the
coordinator does not see which state's transfer a request was)."""
COORDINATOR_S3 = "coordinator S3"
"""The kind of the coordinator's own S3 requests in :func:`breakdown`."""


@dataclass(frozen=True)
class AttemptBill:
    """What one invocation cost: Lambda (its request and compute) and the S3 requests its
    worker made."""

    actor: int | None  # None: a spare, which took no actor
    attempt: int
    kind: str  # one of KINDS
    source: str  # "REPORT" or "upper bound"
    region: str  # where it ran (an upper bound: the dearest of the run's regions)
    billed_ms: int
    memory_mb: int
    architecture: str
    lambda_dollars: Decimal
    s3: Mapping[str, int] = field(default_factory=dict)
    s3_dollars: Decimal = Decimal(0)
    max_memory_mb: int | None = None
    init_ms: Decimal | None = None

    @property
    def dollars(self) -> Decimal:
        return self.lambda_dollars + self.s3_dollars

    @property
    def gb_seconds(self) -> Decimal:
        return gb_seconds(self.memory_mb, Decimal(self.billed_ms) / 1000)

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "source": self.source, "region": self.region,
            "billed_ms": self.billed_ms, "memory_mb": self.memory_mb,
            "architecture": self.architecture, "dollars": f"{self.dollars:f}",
            "lambda_dollars": f"{self.lambda_dollars:f}", "s3_dollars": f"{self.s3_dollars:f}",
        }
        if any(self.s3.values()):
            out["s3"] = dict(self.s3)
        if self.max_memory_mb is not None:
            out["max_memory_mb"] = self.max_memory_mb
        if self.init_ms is not None:
            out["init_ms"] = f"{self.init_ms:f}"
        return out


def kind_of(line: Mapping[str, Any], final: bool) -> str:
    """``work`` for the attempt that ended its actor, ``backup`` for a twin superseded by
    the other, else ``retry``."""
    if final:
        return "work"
    return "backup" if "supersed" in str(line.get("error") or "") else "retry"


def _lambda_dollars(prices: Prices, region: str, function: FunctionSettings, billed_ms: int,
                    memory_mb: int) -> Decimal:
    p = prices.region(region)
    return p.request + p.gb_second[function.architecture] * gb_seconds(
        memory_mb, Decimal(billed_ms) / 1000)


def _priced(prices: Prices, functions: Mapping[str, FunctionSettings], report: Report | None,
            region: str | None, billed_ms: int) -> tuple[str, str, int, int, Decimal]:
    """(source, region, billed ms, memory, Lambda dollars) of one invocation: from its
    REPORT where it ran, else ``billed_ms`` at the function's memory in the dearest region."""
    if report is not None and region is not None:
        function = functions.get(region, FunctionSettings(report.memory_mb))
        return ("REPORT", region, report.billed_ms, report.memory_mb, _lambda_dollars(
            prices, region, function, report.billed_ms, report.memory_mb))
    dearest = max(functions, key=lambda r: _lambda_dollars(
        prices, r, functions[r], billed_ms, functions[r].memory_mb))
    function = functions[dearest]
    return ("upper bound", dearest, billed_ms, function.memory_mb, _lambda_dollars(
        prices, dearest, function, billed_ms, function.memory_mb))


def bill(lines: Sequence[Mapping[str, Any]], reports: Mapping[str, tuple[Report, str]],
         functions: Mapping[str, FunctionSettings], prices: Prices, bucket_region: str
         ) -> list[AttemptBill]:
    """Each attempt of a run record priced.

    Args:
        lines: the run record's lines (with ``request_id``, ``launched``, ``ended``, ``s3``).
        reports: REPORT lines by request id, with the region whose logs held each.
        functions: the function's settings per region of the run.
        prices: the price table.
        bucket_region: where the S3 requests are billed (the bucket's region).

    An attempt with a REPORT is billed as Lambda billed it, in the region it ran in; one
    without is billed for the coordinator's view of its lifetime (``launched`` to
    ``ended``) at the function's memory in the dearest region of the run: an upper bound.
    Its worker's S3 requests (``s3``) are priced in ``bucket_region``.
    """
    final: dict[int, int] = {}
    for index, line in enumerate(lines):
        actor = int(line["actor"])
        if actor not in final or not lines[final[actor]].get("ok"):
            final[actor] = index
    out = []
    for index, line in enumerate(lines):
        if not int(line.get("attempt", 0)):
            continue  # no worker ever took the actor: nothing ran
        found = reports.get(str(line.get("request_id") or ""))
        span = float(line.get("ended", 0.0)) - float(line.get("launched", 0.0))
        source, region, billed, memory, dollars = _priced(
            prices, functions, found[0] if found else None, found[1] if found else None,
            ceil_ms(max(span, 0.0)))
        counts = {k: int(n) for k, n in (line.get("s3") or {}).items() if k in S3_KINDS}
        report = found[0] if found else None
        out.append(AttemptBill(
            int(line["actor"]), int(line["attempt"]),
            kind_of(line, final[int(line["actor"])] == index), source, region, billed, memory,
            functions.get(region, FunctionSettings()).architecture, dollars, counts,
            s3_dollars(counts, prices, bucket_region),
            report.max_memory_mb if report else None, report.init_ms if report else None))
    return out


def spares(found: Sequence[tuple[Report, str]], missing: int,
           functions: Mapping[str, FunctionSettings], prices: Prices) -> list[AttemptBill]:
    """The workers that took no actor: those whose REPORT was found (with its region), and
    ``missing`` more billed for the whole function timeout in the dearest region, an upper
    bound (the coordinator never saw them work, and cannot tell when they ended)."""
    out = []
    for report, region in found:
        source, where, billed, memory, dollars = _priced(prices, functions, report, region, 0)
        out.append(AttemptBill(None, 0, "spare", source, where, billed, memory,
                               functions.get(where, FunctionSettings()).architecture, dollars,
                               max_memory_mb=report.max_memory_mb, init_ms=report.init_ms))
    longest = max(f.timeout_s for f in functions.values()) * 1000
    for _ in range(max(0, missing)):
        source, where, billed, memory, dollars = _priced(prices, functions, None, None,
                                                         longest)
        out.append(AttemptBill(None, 0, "spare", source, where, billed, memory,
                               functions[where].architecture, dollars))
    return out


@dataclass(frozen=True)
class RunBill:
    """A run's bill: every invocation (attempts and spares) and the coordinator's own S3
    requests (the preflight's listing, a stitch), as the job counts them."""

    invocations: tuple[AttemptBill, ...]
    coordinator_s3: Mapping[str, int]
    coordinator_dollars: Decimal
    prices: Prices

    @property
    def total(self) -> Decimal:
        return sum((b.dollars for b in self.invocations), self.coordinator_dollars)

    @property
    def bounded(self) -> int:
        """Invocations billed for an upper bound (no REPORT found)."""
        return sum(1 for b in self.invocations if b.source != "REPORT")

    def s3(self) -> tuple[dict[str, int], Decimal]:
        """Every S3 request of the run by kind, and their dollars."""
        counts = {k: int(self.coordinator_s3.get(k, 0)) for k in S3_KINDS}
        for b in self.invocations:
            for kind, n in b.s3.items():
                counts[kind] += n
        return counts, sum((b.s3_dollars for b in self.invocations), self.coordinator_dollars)

    def phrase(self) -> str:
        """The cost as the run's summary line shows it: the total, then each kind of
        invocation apart, then the S3 requests of it all.

        >>> RunBill((), {}, Decimal(0), load_prices()).phrase()
        'cost $0.00 (nothing ran)'
        """
        parts = []
        for kind in KINDS:
            chosen = [b for b in self.invocations if b.kind == kind]
            if chosen:
                parts.append(f"{kind} {money(sum((b.dollars for b in chosen), Decimal(0)))}"
                             f" x{len(chosen)}")
        counts, dollars = self.s3()
        if any(counts.values()):
            shown = ", ".join(f"{counts[k]} {k}" for k in S3_KINDS if counts[k])
            parts.append(f"S3 {money(dollars)} of it for {shown}")
        most = "at most " if self.bounded else ""
        return f"cost {most}{money(self.total)} ({'; '.join(parts) or 'nothing ran'})"

    def how(self) -> str:
        """Where the figures come from: REPORT lines or upper bounds, regions, prices."""
        reported = len(self.invocations) - self.bounded
        text = f"{reported} of {len(self.invocations)} invocation(s) billed from their REPORT lines"
        if self.bounded:
            text += (f", {self.bounded} for an upper bound (the coordinator's view of the "
                     "worker's lifetime; a spare: the function timeout) in the dearest region")
        regions: dict[str, int] = {}
        for b in self.invocations:
            regions[b.region] = regions.get(b.region, 0) + 1
        if len(regions) > 1:
            text += "; by region: " + ", ".join(f"{r} {n}" for r, n in regions.items())
        if any(self.coordinator_s3.values()):
            text += "; the coordinator's S3 requests as the job counts them"
        return (f"{text}; first-tier prices as of {self.prices.as_of}, the free tier not "
                "taken off")

    def run_record(self) -> dict[str, Any]:
        """The run-wide part of the bill, for the run record: the spares, the coordinator's
        S3 requests, the total."""
        return {
            "total": f"{self.total:f}",
            "spares": [b.to_record() for b in self.invocations if b.kind == "spare"],
            "coordinator_s3": dict(self.coordinator_s3),
            "coordinator_dollars": f"{self.coordinator_dollars:f}",
            "prices_as_of": self.prices.as_of,
        }


def breakdown(lines: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Decimal],
                                                           dict[str, Decimal], list[str]]:
    """A priced run record (lines with ``cost``, the first with ``run_cost``) by state, by
    kind (in the order of :data:`KINDS`, then :data:`COORDINATOR_S3`), and one row per
    invocation.

    An attempt's Lambda dollars are shared among its states by the time each lasted in the
    coordinator's view, from its launch (:data:`BEFORE_HELLO` until the first state) to
    its last state's start; its S3 dollars go to :data:`WORKER_S3`, a spare's dollars to
    :data:`SPARE`, the coordinator's S3 requests to a kind and a row of their own.

    Raises:
        ConfigError: no line carries a cost.
    """
    by_state: dict[str, Decimal] = {}
    by_kind: dict[str, Decimal] = {}
    rows: list[str] = []

    def add(table: dict[str, Decimal], key: str, amount: Decimal) -> None:
        table[key] = table.get(key, Decimal(0)) + amount

    def row(who: str, cost: Mapping[str, Any], dollars: Decimal) -> str:
        s3 = cost.get("s3") or {}
        shown = f", S3 {', '.join(f'{n} {k}' for k, n in s3.items())}" if s3 else ""
        return (f"{who}: {cost.get('kind', 'work')}, {money(dollars)} "
                f"({cost.get('billed_ms')} ms billed at {cost.get('memory_mb')} MB in "
                f"{cost.get('region', '?')}{shown}, from {cost.get('source')})")

    spare_rows: list[str] = []
    for line in lines:
        run = line.get("run_cost")
        if isinstance(run, dict):
            for spare in run.get("spares") or []:
                dollars = Decimal(str(spare["dollars"]))
                add(by_kind, "spare", dollars)
                add(by_state, SPARE, dollars)
                spare_rows.append(row("spare", spare, dollars))
            coordinator = Decimal(str(run.get("coordinator_dollars", 0)))
            if coordinator:
                add(by_kind, COORDINATOR_S3, coordinator)
                add(by_state, f"({COORDINATOR_S3})", coordinator)
        cost = line.get("cost")
        if not isinstance(cost, dict):
            continue
        dollars = Decimal(str(cost["dollars"]))
        s3 = Decimal(str(cost.get("s3_dollars", 0)))
        add(by_kind, str(cost.get("kind", "work")), dollars)
        if s3:
            add(by_state, WORKER_S3, s3)
        stamps = [(Decimal(repr(float(t))), str(name)) for t, name in line.get("timestamps", [])]
        start = Decimal(repr(float(line.get("launched", 0.0))))
        parts: list[tuple[str, Decimal]] = []
        if stamps:
            parts.append((BEFORE_HELLO, max(Decimal(0), stamps[0][0] - start)))
            parts += [(name, max(Decimal(0), t_next - t))
                      for (t, name), (t_next, _) in itertools.pairwise(stamps)]
        whole = sum((d for _, d in parts), Decimal(0))
        for name, spent in parts:
            add(by_state, name, (dollars - s3) * spent / whole if whole else Decimal(0))
        if not whole:
            add(by_state, BEFORE_HELLO, dollars - s3)
        rows.append(row(f"actor {line['actor']} attempt {line.get('attempt', 0)}", cost,
                        dollars))
    rows += spare_rows
    if not rows:
        raise ConfigError("the run record carries no cost: it was written without the bill "
                          "(by an older mu, or by a run that launched nothing)")
    order = [*KINDS, COORDINATOR_S3]
    kinds = {k: by_kind[k] for k in sorted(by_kind, key=lambda k: (
        order.index(k) if k in order else len(order), k))}
    return by_state, kinds, rows


def cost_lines(lines: Sequence[Mapping[str, Any]]) -> list[str]:
    """``mu cost``'s output for a priced run record: the total, by kind, by state, by
    invocation.

    Raises:
        ConfigError: no line carries a cost.
    """
    by_state, by_kind, rows = breakdown(lines)
    bounded = sum(1 for r in rows if r.endswith("from upper bound)"))
    most = f" (at most: {bounded} of {len(rows)} upper bounds)" if bounded else ""
    out = [f"total: {money(sum(by_kind.values(), Decimal(0)))}{most} (Lambda requests and "
           "compute, S3 requests)", "by kind:"]
    out += [f"  {kind}: {money(dollars)}" for kind, dollars in by_kind.items()]
    out.append("by state:")
    out += [f"  {state}: {money(dollars)}"
            for state, dollars in sorted(by_state.items(), key=lambda kv: -kv[1])]
    out.append("by actor:")
    out += [f"  {r}" for r in rows]
    return out
