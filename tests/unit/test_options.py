"""The typed options: region parsing (a pure function, by property) and defaults stated once."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mu.config import RunConfig
from mu.errors import ConfigError
from mu.lambdaize import LambdaizeOptions
from mu.launch import DEFAULT_MEMORY, DEFAULT_TIMEOUT, FunctionSpec
from mu.options import JobOptions, Png2Y4MOptions, RunOptions, SiteOptions, split_regions

REGION = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
SPACE = st.sampled_from(["", " ", "  ", "\t"])


@given(st.lists(st.lists(st.tuples(SPACE, REGION, SPACE), min_size=1), min_size=1))
def test_split_regions_keeps_each_region_once_in_order(words: list[list[tuple[str, str, str]]]
                                                        ) -> None:
    items = [",".join(f"{a}{r}{b}" for a, r, b in word) for word in words]
    expected = list(dict.fromkeys(r for word in words for _, r, _ in word))
    assert list(split_regions(items)) == expected
    assert split_regions(",".join(items)) == tuple(expected)


@given(st.lists(st.sampled_from(["", ",", " , ", " "]), min_size=1))
def test_no_region_at_all_is_refused_naming_the_flag(items: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"^--region names no region$"):
        split_regions(items, "--region")


def test_run_defaults_are_the_coordinator_s() -> None:
    run, config = RunOptions(), RunConfig()
    assert (run.retries, run.arrival_timeout, run.port) == (
        config.retries, config.arrival_timeout, config.port)


def test_function_defaults_are_stated_once() -> None:
    spec = FunctionSpec("f", b"")
    lam = LambdaizeOptions("x")
    assert (spec.memory, spec.timeout) == (lam.memory, lam.timeout) == (
        DEFAULT_MEMORY, DEFAULT_TIMEOUT)
    assert lam.regions == SiteOptions().regions


def test_the_parser_s_defaults_are_the_options_defaults() -> None:
    from mu.cli import parse_png2y4m

    job, run, site = parse_png2y4m([])
    assert job == Png2Y4MOptions()
    assert run == RunOptions()
    assert dataclasses.replace(site, worker_command="") == SiteOptions(
        arrival_timeout=RunOptions().arrival_timeout)


@pytest.mark.parametrize(("field", "value", "flag"), [("workers", 0, "-n/--workers"),
                                                      ("offset", -1, "-o/--offset")])
def test_job_options_name_the_flag_of_a_bad_value(field: str, value: int, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag} must be"):
        JobOptions(**{field: value})


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunOptions().retries = 5  # type: ignore[misc]
