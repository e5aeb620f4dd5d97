"""mu.cost: the price table, the estimate and the REPORT parser (pure)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mu.cost import (
    PRICE_FILE,
    Plan,
    durations_from_record,
    estimate,
    gb_seconds,
    load_prices,
    parse_report,
    price,
)
from mu.errors import ConfigError

PRICES = load_prices()
TABLE = json.loads(PRICE_FILE.read_text())
REGIONS = ["us-east-1", "us-west-1", "us-west-2", "eu-west-1", "ap-south-99"]


def test_the_table_names_its_date_source_and_tier() -> None:
    assert PRICES.as_of and "aws.amazon.com/lambda/pricing" in PRICES.source
    assert "first tier" in PRICES.tier
    assert PRICES.region("us-east-1").gb_second["x86_64"] == Decimal("0.0000166667")
    assert PRICES.region("us-east-1").gb_second["arm64"] == Decimal("0.0000133334")
    assert PRICES.region("us-west-1").s3_per_1000["PUT"] == Decimal("0.0055")
    assert not PRICES.listed("ap-south-99")  # priced with the default entry


def hand_price(region: str, arch: str, invocations: int, memory: int, seconds: Decimal,
               gets: int, puts: int, lists: int) -> Decimal:
    """The computation a user does with the JSON table and a pencil."""
    entry = {**TABLE["default"]}
    for key, value in TABLE["regions"].get(region, {}).items():
        entry[key] = {**entry[key], **value} if isinstance(value, dict) else value
    gbs = Decimal(memory) / 1024 * seconds * invocations
    s3 = entry["s3_per_1000"]
    return (Decimal(entry["lambda_request"]) * invocations
            + Decimal(entry["lambda_gb_second"][arch]) * gbs
            + Decimal(s3["GET"]) * gets / 1000 + Decimal(s3["PUT"]) * puts / 1000
            + Decimal(s3["LIST"]) * lists / 1000)


@given(
    regions=st.lists(st.sampled_from(REGIONS), min_size=1, max_size=4, unique=True),
    arch=st.sampled_from(["x86_64", "arm64"]),
    invocations=st.integers(0, 10_000),
    memory=st.integers(128, 10_240),
    millis=st.integers(1, 900_000),
    gets=st.integers(0, 50),
    puts=st.integers(0, 5),
    lists=st.integers(0, 20),
)
def test_the_estimate_is_the_hand_computation(
    regions: list[str], arch: str, invocations: int, memory: int, millis: int, gets: int,
    puts: int, lists: int,
) -> None:
    seconds = Decimal(millis) / 1000
    plan = Plan(invocations, tuple(regions), memory, seconds, {"GET": gets, "PUT": puts},
                {"LIST": lists})
    usage = estimate(plan)
    assert sum(u.invocations for u in usage.values()) == invocations
    counts = [usage[r].invocations for r in regions]
    assert max(counts) - min(counts) <= 1  # round-robin
    expected = Decimal(0)
    for i, region in enumerate(regions):
        n = counts[i]
        expected += hand_price(region, arch, n, memory, seconds, gets * n, puts * n,
                               lists if i == 0 else 0)
    assert price(usage, PRICES, arch).total == expected
    assert sum(u.gb_seconds for u in usage.values()) == gb_seconds(memory, seconds) * invocations


@pytest.mark.parametrize("text, words", [
    ("{", "is not JSON"),
    ("[]", "JSON object"),
    ('{"as_of": "x", "source": "s", "tier": "t", "currency": "USD"}', "default must be"),
    (json.dumps({**TABLE, "default": {**TABLE["default"], "lambda_request": "cheap"}}),
     "default.lambda_request is not a number"),
    (json.dumps({**TABLE, "regions": {"x": {"s3_per_1000": {"HEAD": "1"}}}}),
     "unknown key 'HEAD'"),
    (json.dumps({k: v for k, v in TABLE.items() if k != "as_of"}), "'as_of'"),
])
def test_a_bad_price_file_is_one_clear_error(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_prices(path)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message


def test_a_missing_price_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read price file .*nope\.json"):
        load_prices(tmp_path / "nope.json")


@given(
    request=st.uuids().map(str),
    billed=st.integers(1, 900_000),
    memory=st.integers(128, 10_240),
    used=st.integers(1, 10_240),
    init=st.one_of(st.none(), st.integers(1, 10_000)),
)
def test_report_lines_parse_as_lambda_writes_them(
    request: str, billed: int, memory: int, used: int, init: int | None
) -> None:
    tail = f"\tInit Duration: {init}.25 ms" if init is not None else ""
    line = (f"REPORT RequestId: {request}\tDuration: {billed - 0.5:.2f} ms\tBilled Duration: "
            f"{billed} ms\tMemory Size: {memory} MB\tMax Memory Used: {used} MB{tail}\t\n")
    report = parse_report(line)
    assert report is not None
    assert (report.request_id, report.billed_ms, report.memory_mb, report.max_memory_mb) == (
        request, billed, memory, used)
    assert report.init_ms == (Decimal(f"{init}.25") if init is not None else None)
    assert report.gb_seconds == Decimal(memory) / 1024 * Decimal(billed) / 1000
    assert parse_report(f"END RequestId: {request}") is None


def test_durations_from_a_record_scale_per_frame_states() -> None:
    stamps = [[0.0, "Config"], [1.0, "Loop"], [1.5, "Run"], [3.5, "Loop"], [4.0, "Run"],
              [6.0, "Loop"], [6.5, "Upload"], [7.0, "Final"]]
    lines = [{"ok": True, "timestamps": stamps}, {"ok": False, "timestamps": [[0, "Config"],
                                                                             [99, "Run"]]}]
    total, parts = durations_from_record(lines, frames_then=2, frames_now=6)
    assert parts["Config"] == Decimal(1) and parts["Upload"] == Decimal("0.5")
    assert parts["Run"] == Decimal(4) * 3 and parts["Loop"] == Decimal("1.5") * 3
    assert total == Decimal(1) + Decimal("0.5") + Decimal(12) + Decimal("4.5")
    with pytest.raises(ConfigError, match="no finished attempt"):
        durations_from_record([{"ok": False, "timestamps": stamps}], 1, 1)


def line(actor: int, attempt: int, ok: bool, start: float, end: float, error: str | None = None,
         request: str = "") -> dict[str, object]:
    return {"actor": actor, "attempt": attempt, "ok": ok, "error": error, "request_id": request,
            "launched": start, "ended": end,
            "timestamps": [[start + 0.1, "A"], [start + 0.2, "B"], [end, "Final"]]}


@given(spans=st.lists(st.integers(1, 100_000), min_size=1, max_size=8),
       billed=st.integers(1, 900_000), memory=st.integers(128, 10_240))
def test_the_bill_prices_reports_and_upper_bounds_and_tells_kinds_apart(
    spans: list[int], billed: int, memory: int
) -> None:
    from mu.cost import Report, bill, breakdown

    lines = [line(0, 1, False, 0.0, 1.0, "lost the worker"),  # retried
             line(0, 2, True, 1.0, 2.0, request="r-ok"),  # the work
             line(1, 1, False, 0.0, 3.0, "superseded by its twin"),  # a losing backup
             line(1, 2, True, 0.5, 2.5),  # the twin that won
             *[line(2 + i, 1, True, 0.0, ms / 1000) for i, ms in enumerate(spans)]]
    reports = {"r-ok": Report("r-ok", Decimal(billed), billed, memory, 64)}
    bills = bill(lines, reports, 1536, PRICES, "us-east-1")
    p = PRICES.region("us-east-1")
    kinds = {(b.actor, b.attempt): (b.kind, b.source) for b in bills}
    assert kinds[(0, 1)] == ("retry", "upper bound") and kinds[(0, 2)] == ("work", "REPORT")
    assert kinds[(1, 1)] == ("backup", "upper bound")
    work = next(b for b in bills if b.source == "REPORT")
    assert work.dollars == p.request + p.gb_second["x86_64"] * Decimal(memory) / 1024 * (
        Decimal(billed) / 1000)
    for b, ms in zip(bills[4:], spans, strict=True):
        assert b.billed_ms == ms and b.memory_mb == 1536  # the coordinator's view, rounded up
    priced = [{**ln, "cost": b.to_record()} for ln, b in zip(lines, bills, strict=True)]
    by_state, by_kind, rows = breakdown(priced)
    total = sum((b.dollars for b in bills), Decimal(0))
    assert abs(sum(by_state.values(), Decimal(0)) - total) < Decimal("1e-20")
    assert sum(by_kind.values(), Decimal(0)) == total and len(rows) == len(bills)
