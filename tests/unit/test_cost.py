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
from mu.launch import FunctionSettings

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


def entry(region: str) -> dict[str, object]:
    """A region's prices as a user reads them off the JSON table."""
    out = {**TABLE["default"]}
    for key, value in TABLE["regions"].get(region, {}).items():
        out[key] = {**out[key], **value} if isinstance(value, dict) else value
    return out


def hand_lambda(region: str, arch: str, invocations: int, memory: int, seconds: Decimal
                ) -> Decimal:
    """Lambda's part, computed with the JSON table and a pencil."""
    p: dict[str, object] = entry(region)
    gbs = Decimal(memory) / 1024 * seconds * invocations
    return (Decimal(str(p["lambda_request"])) * invocations
            + Decimal(p["lambda_gb_second"][arch]) * gbs)  # type: ignore[index]


def hand_s3(region: str, gets: int, puts: int, lists: int) -> Decimal:
    s3: dict[str, str] = entry(region)["s3_per_1000"]  # type: ignore[assignment]
    return (Decimal(s3["GET"]) * gets + Decimal(s3["PUT"]) * puts
            + Decimal(s3["LIST"]) * lists) / 1000


@given(
    regions=st.lists(st.sampled_from(REGIONS), min_size=1, max_size=4, unique=True),
    archs=st.lists(st.sampled_from(["x86_64", "arm64"]), min_size=4, max_size=4),
    memories=st.lists(st.integers(128, 10_240), min_size=4, max_size=4),
    timeouts=st.lists(st.integers(1, 900), min_size=4, max_size=4),
    invocations=st.integers(0, 10_000),
    millis=st.one_of(st.none(), st.integers(1, 900_000)),
    gets=st.integers(0, 50),
    puts=st.integers(0, 5),
    lists=st.integers(0, 20),
    spares=st.integers(0, 10),
)
def test_the_estimate_is_the_hand_computation(
    regions: list[str], archs: list[str], memories: list[int], timeouts: list[int],
    invocations: int, millis: int | None, gets: int, puts: int, lists: int, spares: int,
) -> None:
    """Each region's function is priced with its own memory, timeout and architecture; the
    S3 requests in the bucket's region (the first); spares make none."""
    functions = {r: FunctionSettings(memories[i], timeouts[i], archs[i])
                 for i, r in enumerate(regions)}
    seconds = None if millis is None else Decimal(millis) / 1000
    plan = Plan(invocations + spares, tuple(regions), functions, seconds,
                {"GET": gets, "PUT": puts}, {"LIST": lists}, spares)
    usage = estimate(plan)
    assert sum(u.invocations for u in usage.values()) == invocations + spares
    counts = [usage[r].invocations for r in regions]
    assert max(counts) - min(counts) <= 1  # round-robin
    expected = hand_s3(regions[0], gets * invocations, puts * invocations, lists)
    gbs = Decimal(0)
    for i, region in enumerate(regions):
        took = seconds if seconds is not None else Decimal(timeouts[i])
        expected += hand_lambda(region, archs[i], counts[i], memories[i], took)
        gbs += gb_seconds(memories[i], took) * counts[i]
    assert price(usage, PRICES).total == expected
    assert sum(u.gb_seconds for u in usage.values()) == gbs


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
         request: str = "", s3: dict[str, int] | None = None) -> dict[str, object]:
    return {"actor": actor, "attempt": attempt, "ok": ok, "error": error, "request_id": request,
            "launched": start, "ended": end, "s3": s3 or {},
            "timestamps": [[start + 0.1, "A"], [start + 0.2, "B"], [end, "Final"]]}


FUNCTIONS = {"us-east-1": FunctionSettings(1536, 180), "us-west-2": FunctionSettings(3008, 60),
             "eu-west-1": FunctionSettings(2048, 300, "arm64")}


def lambda_cost(region: str, billed: int, memory: int) -> Decimal:
    return hand_lambda(region, FUNCTIONS[region].architecture, 1, memory,
                       Decimal(billed) / 1000)


@given(spans=st.lists(st.integers(1, 100_000), min_size=1, max_size=8),
       billed=st.integers(1, 900_000), memory=st.integers(128, 10_240),
       where=st.sampled_from(sorted(FUNCTIONS)), gets=st.integers(0, 30),
       puts=st.integers(0, 3), found=st.integers(0, 3), missing=st.integers(0, 3))
def test_the_bill_prices_each_invocation_where_it_ran_and_tells_kinds_apart(
    spans: list[int], billed: int, memory: int, where: str, gets: int, puts: int,
    found: int, missing: int,
) -> None:
    from mu.cost import Report, RunBill, bill, breakdown, cost_lines, money, s3_dollars, spares

    lines = [line(0, 1, False, 0.0, 1.0, "lost the worker"),  # retried
             line(0, 2, True, 1.0, 2.0, request="r-ok", s3={"GET": gets, "PUT": puts}),
             line(1, 1, False, 0.0, 3.0, "superseded by its twin"),  # a losing backup
             line(1, 2, True, 0.5, 2.5),  # the twin that won
             *[line(2 + i, 1, True, 0.0, ms / 1000) for i, ms in enumerate(spans)]]
    reports = {"r-ok": (Report("r-ok", Decimal(billed), billed, memory, 64), where)}
    bills = bill(lines, reports, FUNCTIONS, PRICES, "us-east-1")
    kinds = {(b.actor, b.attempt): (b.kind, b.source) for b in bills}
    assert kinds[(0, 1)] == ("retry", "upper bound") and kinds[(0, 2)] == ("work", "REPORT")
    assert kinds[(1, 1)] == ("backup", "upper bound")
    work = next(b for b in bills if b.source == "REPORT")
    # where it ran, at its REPORT's memory; its S3 requests in the bucket's region
    assert work.region == where and work.lambda_dollars == lambda_cost(where, billed, memory)
    assert work.s3_dollars == hand_s3("us-east-1", gets, puts, 0)
    for b, ms in zip(bills[4:], spans, strict=True):
        # no REPORT: the coordinator's view, rounded up, in the dearest region at its memory
        assert b.billed_ms == ms and b.source == "upper bound"
        assert b.lambda_dollars == max(lambda_cost(r, ms, f.memory_mb)
                                       for r, f in FUNCTIONS.items())
    extra = spares([(Report(f"s{i}", Decimal(5), 5, 1536, 60), "us-east-1")
                    for i in range(found)], missing, FUNCTIONS, PRICES)
    assert [b.source for b in extra] == ["REPORT"] * found + ["upper bound"] * missing
    assert all(b.billed_ms == 300_000 for b in extra[found:])  # the longest timeout
    run = RunBill(tuple(bills + extra), {"LIST": 1},
                  s3_dollars({"LIST": 1}, PRICES, "us-east-1"), PRICES)
    total = sum((b.dollars for b in bills + extra), Decimal(0)) + hand_s3("us-east-1", 0, 0, 1)
    assert run.total == total
    phrase = run.phrase()
    assert phrase.startswith("cost at most $") and "retry $" in phrase and "backup $" in phrase
    assert ("spare $" in phrase) == bool(found + missing)
    priced = [{**ln, "cost": b.to_record()} for ln, b in zip(lines, bills, strict=True)]
    priced[0]["run_cost"] = run.run_record()
    by_state, by_kind, rows = breakdown(priced)
    assert abs(sum(by_state.values(), Decimal(0)) - total) < Decimal("1e-20")
    assert sum(by_kind.values(), Decimal(0)) == total and len(rows) == len(bills + extra)
    assert by_kind.get("spare", Decimal(0)) == sum((b.dollars for b in extra), Decimal(0))
    assert cost_lines(priced)[0].startswith(f"total: {money(total)} (at most: ")
