"""The worker's command table, values and templating, without sockets or S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mu.protocol import EXPECT, parse_message
from mu.worker.commands import (
    COMMANDS,
    REDACTED,
    Worker,
    dispatch,
    expand_path,
    initial_vals,
    redacted,
    render,
)
from mu.worker.jobs import JobSet
from mu.worker.s3 import S3


class Sent(list[str]):
    """Messages the worker queued for the coordinator."""


def make_worker(tmpdir: str = "/tmp/mu-w", **event: object) -> tuple[Worker, Sent]:
    sent = Sent()
    worker = Worker(
        vals=initial_vals(event),
        command="./tool ##INFILE##",
        tmpdir=tmpdir,
        cwd=tmpdir,
        send=sent.append,
        jobs=JobSet(sent.append),
        s3=S3("us-east-1"),
    )
    return worker, sent


@pytest.fixture
def worker() -> Iterator[tuple[Worker, Sent]]:
    w, sent = make_worker()
    try:
        yield w, sent
    finally:
        w.jobs.close()


def answer(pair: tuple[Worker, Sent], command: str) -> list[str]:
    w, sent = pair
    sent.clear()
    dispatch(w, command)
    return list(sent)


def test_table_matches_the_protocol_expectations() -> None:
    assert set(COMMANDS) == set(EXPECT)


def test_every_response_matches_its_expected_prefix(worker: tuple[Worker, Sent]) -> None:
    cases = {
        "set": "set:a:b",
        "seti": "seti:n:3",
        "get": "get:a",
        "geti": "geti:a",
        "dump_vals": "dump_vals:",
        "echo": "echo:x",
        "close_connect": "close_connect:",
    }
    for name, command in cases.items():
        responses = answer(worker, command)
        prefix = EXPECT[name]
        assert prefix is not None and responses[-1].startswith(prefix), (command, responses)
        for response in responses:
            parse_message(response)  # every response is OK..., FAIL(...) or INFO:k:v


def test_exact_value_responses(worker: tuple[Worker, Sent]) -> None:
    assert answer(worker, "set:k:v:w") == ["OK:SET(k)"]
    assert answer(worker, "get:k") == ["OK:GET(v:w)"]
    assert answer(worker, "seti:n:-5") == ["OK:SETI(n)"]
    assert answer(worker, "geti:n") == ["INFO:n:-5", "OK:GETI(n)"]
    assert answer(worker, "seti:n:1.5") == ["FAIL(seti: '1.5' is not an integer)"]
    assert answer(worker, "get:missing") == ["FAIL(no such variable missing)"]
    assert answer(worker, "echo:a:b") == ["OK:ECHO(a:b)"]
    assert answer(worker, "close_connect:") == ["OK:CLOSE_CONNECT"]
    assert answer(worker, "nope") == ["FAIL(no such command 'nope')"]
    assert answer(worker, "connect:h:0:x") == ["FAIL(connect: port 0 is out of range 1-65535)"]
    assert answer(worker, "connect:h:1") == [
        "FAIL(connect: expected connect:host:port:first, got connect:h:1)"
    ]
    assert answer(worker, "connect:h:1:x") == [
        "FAIL(connect: peer links are not available in this session)"
    ]


def test_quit_ends_the_session_without_a_response(worker: tuple[Worker, Sent]) -> None:
    w, sent = worker
    assert dispatch(w, "quit:") is True
    assert sent == []
    assert dispatch(w, "echo:x") is False


def test_transfers_check_their_values_before_touching_s3(worker: tuple[Worker, Sent]) -> None:
    assert answer(worker, "retrieve:") == ["FAIL(retrieve: no inkey set)"]
    answer(worker, "set:inkey:k")
    assert answer(worker, "retrieve:") == ["FAIL(retrieve: no targfile set)"]
    answer(worker, "set:targfile:f")
    assert answer(worker, "retrieve:") == ["FAIL(retrieve: no bucket set)"]
    assert answer(worker, "upload:") == ["FAIL(upload: no outkey set)"]
    assert answer(worker, "upload:k\0") == [
        "FAIL(upload: expected upload: or upload:key\\0file, got 'k\\x00')"
    ]


def test_run_without_any_command(tmp_path: Path) -> None:
    w, sent = make_worker(str(tmp_path))
    w.command = ""
    try:
        dispatch(w, "run:")
    finally:
        w.jobs.close()
    assert sent == ["FAIL(run: no command given and the function has none)"]


def test_initial_vals_from_the_event() -> None:
    vals = initial_vals(
        {
            "bucket": "b",
            "region": "r",
            "nonblock": "1",
            "bg_silent": 0,
            "infile": "i",
            "outfile": "o",
            "quality": 9,
            "vars": "V=1",
            "args": "-x",
            "cacert": "secret",
        }
    )
    assert vals == {
        "bucket": "b",
        "region": "r",
        "nonblock": 1,
        "bg_silent": 0,
        "cmdinfile": "i",
        "cmdoutfile": "o",
        "cmdquality": "9",
        "cmdvars": "V=1",
        "cmdargs": "-x",
    }
    assert initial_vals({"nonblock": "yes"})["nonblock"] == 0


def test_render_order_and_tmpdir_last() -> None:
    vals = {
        "cmdinfile": "##TMPDIR##/%08d.png",
        "cmdoutfile": "##TMPDIR##/out.y4m",
        "cmdquality": "5",
        "cmdvars": "A=##TMPDIR##",
        "cmdargs": "##QUALITY##",
    }
    assert render("./b -o ##OUTFILE## -q ##QUALITY## ##INFILE##", vals, "/t") == (
        "A=/t ./b -o /t/out.y4m -q 5 /t/%08d.png ##QUALITY##"
    )
    assert render("plain", {}, "/t") == "plain"


def test_expand_path() -> None:
    assert expand_path("##TMPDIR##/x", "/t") == "/t/x"
    assert expand_path("x/y", "/t") == "/t/x/y"
    assert expand_path("/abs", "/t") == "/abs"


def test_redaction() -> None:
    vals: dict[str, str | int] = {
        "token": "t",
        "wrkkey": "k",
        "inkey": "in",
        "outkey": "out",
        "mykey": "m",
        "note": "-----BEGIN CERTIFICATE-----",
        "n": 1,
    }
    assert redacted(vals) == {
        "token": REDACTED,
        "wrkkey": REDACTED,
        "inkey": "in",
        "outkey": "out",
        "mykey": REDACTED,
        "note": REDACTED,
        "n": 1,
    }


def test_dump_vals_is_json(worker: tuple[Worker, Sent]) -> None:
    answer(worker, "set:token:abc")
    (dump,) = answer(worker, "dump_vals:")
    vals = json.loads(dump.removeprefix("OK:DUMP_VALS:"))
    assert vals["token"] == REDACTED and vals["bucket"] == ""


keys = st.text(st.characters(blacklist_characters=":", blacklist_categories=["Cs"]), min_size=1)
values = st.text(st.characters(blacklist_categories=["Cs"]))


@given(keys, values)
def test_set_get_round_trip(key: str, value: str) -> None:
    w, sent = make_worker()
    dispatch(w, f"set:{key}:{value}")
    dispatch(w, f"get:{key}")
    assert sent == [f"OK:SET({key})", f"OK:GET({value})"]


@given(st.text(st.characters(blacklist_categories=["Cs"])))
def test_any_command_text_gets_exactly_one_answer_or_quits(text: str) -> None:
    w, sent = make_worker()
    if text.partition(":")[0] in ("retrieve", "upload", "run", "connect"):
        return  # these need S3, a shell or a network: covered by the integration tests
    quit_now = dispatch(w, text)
    if quit_now:
        assert sent == []
    else:
        assert sent and sent[-1].startswith(("OK", "FAIL("))


# --------------------------------------------------------------------------- process sweeps


@given(
    shell=st.integers(1, 4_194_304),
    elapsed=st.floats(0, 1e6, allow_nan=False),
    last=st.one_of(st.none(), st.integers(1, 4_194_304)),
)
def test_the_sweep_starts_at_the_shell_unless_pids_may_have_wrapped(
    shell: int, elapsed: float, last: int | None
) -> None:
    from mu.worker.reaper import SHORT_COMMAND, scan_from

    since = scan_from(shell, elapsed, last)
    wrapped = last is not None and last < shell
    assert since == (0 if elapsed >= SHORT_COMMAND or wrapped else shell)
