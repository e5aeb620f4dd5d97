"""mu.faults: parsing the --faults text, per-attempt plans, and the fault: command."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mu.errors import ConfigError
from mu.faults import KINDS, MAX_AFTER, Fault, FaultSpec, parse


def test_parse_the_documented_example() -> None:
    spec = parse("crash=0.1,hang=0.02,drop=0.05,s3-error=0.02,duplicate=0.05,seed=7")
    assert spec == FaultSpec(0.1, 0.02, 0.05, 0.02, 0.05, 7)
    assert str(spec) == "crash=0.1,hang=0.02,drop=0.05,s3-error=0.02,duplicate=0.05,seed=7"
    assert spec.for_workers


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("explode=0.1", "'explode=0.1' is not one of crash=, hang=, drop="),
        ("crash", "'crash' is not one of"),
        ("crash=lots", "crash='lots' is not a number"),
        ("seed=1.5", "seed='1.5' is not an integer"),
        ("hang=1.5", "hang=1.5: a probability must be in [0, 1]"),
        ("crash=0.6,drop=0.6", "crash + hang + drop must not exceed 1"),
    ],
)
def test_bad_specs_name_the_problem(text: str, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert names in str(info.value)


def test_duplicate_alone_sends_nothing_to_workers() -> None:
    assert not parse("duplicate=0.5,seed=3").for_workers


def test_plans_depend_only_on_seed_actor_and_attempt() -> None:
    spec = parse("crash=0.3,hang=0.1,drop=0.2,s3-error=0.05,seed=11")
    first = [spec.plan(a, k) for a in range(50) for k in range(3)]
    again = [spec.plan(a, k) for a in reversed(range(50)) for k in reversed(range(3))]
    assert first == list(reversed(again))
    assert first != [parse("crash=0.3,hang=0.1,drop=0.2,s3-error=0.05,seed=12").plan(a, k)
                     for a in range(50) for k in range(3)]


def test_plans_follow_the_rates() -> None:
    spec = FaultSpec(crash=0.2, hang=0.1, drop=0.3, seed=5)
    kinds = collections.Counter(spec.plan(a, 0).kind for a in range(4000))
    assert abs(kinds["crash"] / 4000 - 0.2) < 0.03
    assert abs(kinds["hang"] / 4000 - 0.1) < 0.03
    assert abs(kinds["drop"] / 4000 - 0.3) < 0.03
    assert abs(kinds[""] / 4000 - 0.4) < 0.03
    for a in range(200):
        plan = spec.plan(a, 1)
        assert (1 <= plan.after <= MAX_AFTER) if plan.kind else plan.after == 0


def test_no_rates_no_faults() -> None:
    spec = FaultSpec(seed=9)
    assert not spec.for_workers
    assert all(not spec.plan(a, 0).kind and not spec.plan(a, 0).s3_error for a in range(20))


@given(
    kind=st.sampled_from(("", *KINDS)),
    after=st.integers(0, 10_000),
    s3_error=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_command_round_trips(kind: str, after: int, s3_error: float, seed: int) -> None:
    fault = Fault(kind, after, s3_error, seed)
    name, _, args = fault.command().partition(":")
    assert name == "fault"
    assert Fault.from_args(args) == fault


@pytest.mark.parametrize(
    "args", ["", "crash:1:0.0", "melt:1:0.0:1", "crash:x:0.0:1", "crash:1:2.0:1", "crash:-1:0:1"]
)
def test_malformed_plans_are_refused(args: str) -> None:
    with pytest.raises(ValueError):
        Fault.from_args(args)
