"""The pure part of ``mu logs``: ``--since`` durations, Lambda's marker lines, and how a
group's events split into invocations (by property, over generated streams)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mu.logs import LogEvent, Splitter, blocks, marker, parse_since, select_request

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@given(st.integers(0, 10**6), st.sampled_from(sorted(UNITS)))
def test_since_is_a_number_and_a_unit(number: int, unit: str) -> None:
    assert parse_since(f"{number}{unit}") == number * UNITS[unit]


@pytest.mark.parametrize("text", ["", "10", "m", "10 minutes", "-5m", "1w", "5mm", "1e3s"])
def test_since_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_since(text)


@given(st.text())
def test_since_accepts_or_says_why(text: str) -> None:
    try:
        assert parse_since(text) >= 0
    except ValueError as exc:
        assert "is not a duration" in str(exc)


def test_markers_in_both_of_lambdas_formats() -> None:
    assert marker("START RequestId: 1-2 Version: $LATEST\n") == ("START", "1-2")
    assert marker("END RequestId: 1-2\n") == ("END", "1-2")
    assert marker("REPORT RequestId: 1-2\tDuration: 1.00 ms\t\n") == ("REPORT", "1-2")
    assert marker("START RequestId: ") is None
    assert marker("hello START RequestId: x") is None
    json_start = json.dumps({"time": "2026-12-02T17:00:00Z", "type": "platform.start",
                             "record": {"requestId": "j-1", "version": "$LATEST"}})
    json_report = json.dumps({"type": "platform.report", "record": {"requestId": "j-1"}})
    assert marker(json_start) == ("START", "j-1")
    assert marker(json_report) == ("REPORT", "j-1")
    assert marker('{"type": "platform.start", "record": 3}') is None
    assert marker('{"message": "platform.start"') is None


# A stream is a list of items: an invocation (request id, its output lines) or a loose line
# (Init output, a thread printing between invocations).
Item = tuple[str, list[str]] | str
requests = st.sampled_from(["r1", "r2", "r3", "r4"])
lines = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=20).filter(
    lambda line: marker(line) is None)
items = st.one_of(st.tuples(requests, st.lists(lines, max_size=3)), lines)
streams = st.dictionaries(st.sampled_from(["s1", "s2", "s3"]), st.lists(items, max_size=5),
                          max_size=3)


def lay_out(layout: dict[str, list[Item]], order: list[int]) -> list[tuple[LogEvent, str | None]]:
    """The events of every stream, merged in an arbitrary order that keeps each stream's;
    each with the invocation it belongs to (None: loose)."""
    per_stream: dict[str, list[tuple[LogEvent, str | None]]] = {}
    for stream, stream_items in layout.items():
        out = per_stream.setdefault(stream, [])
        for item in stream_items:
            if isinstance(item, str):
                out.append((LogEvent(stream, 0, item), None))
                continue
            request, said = item
            out.append((LogEvent(stream, 0, f"START RequestId: {request} Version: $LATEST"),
                        request))
            out += [(LogEvent(stream, 0, line), request) for line in said]
            out.append((LogEvent(stream, 0, f"END RequestId: {request}"), request))
            out.append((LogEvent(stream, 0, f"REPORT RequestId: {request}\tDuration: 1 ms"),
                        request))
    merged = []
    queues = {s: list(events) for s, events in per_stream.items() if events}
    for pick in order:
        if not queues:
            break
        stream = sorted(queues)[pick % len(queues)]
        merged.append(queues[stream].pop(0))
        if not queues[stream]:
            del queues[stream]
    for stream in sorted(queues):
        merged += queues[stream]
    return [(LogEvent(e.stream, t, e.message), r) for t, (e, r) in enumerate(merged)]


@given(streams, st.lists(st.integers(0, 2)))
def test_each_event_goes_to_its_invocation(layout: dict[str, list[Item]], order: list[int]) -> None:
    splitter = Splitter()
    for event, request in lay_out(layout, order):
        assert splitter.feed(event)[0] == request


@given(streams, st.lists(st.integers(0, 2)), requests)
def test_select_request_keeps_exactly_its_lines(
    layout: dict[str, list[Item]], order: list[int], request: str
) -> None:
    events = lay_out(layout, order)
    assert select_request([e for e, _ in events], request) == [e for e, r in events if r == request]


@given(streams, st.lists(st.integers(0, 2)))
def test_blocks_partition_the_events_into_whole_invocations(
    layout: dict[str, list[Item]], order: list[int]
) -> None:
    events = lay_out(layout, order)
    found = blocks([e for e, _ in events])
    assert sorted(e.timestamp for b in found for e in b) == list(range(len(events)))
    owner = {e.timestamp: r for e, r in events}
    for block in found:
        assert len({e.stream for e in block}) == 1
        assert [e.timestamp for e in block] == sorted(e.timestamp for e in block)
        assert len({owner[e.timestamp] for e in block}) == 1
        if owner[block[0].timestamp] is not None:  # a whole invocation, START to REPORT
            assert marker(block[0].message) == ("START", owner[block[0].timestamp])
            assert marker(block[-1].message) == ("REPORT", owner[block[0].timestamp])
    firsts = [b[0].timestamp for b in found]
    assert firsts == sorted(firsts)  # oldest first
    invocations = sum(1 for s in layout.values() for i in s if not isinstance(i, str))
    assert sum(1 for b in found if owner[b[0].timestamp] is not None) == invocations
