"""The emulator's parameter checks, by property: any JSON a client sends is either taken,
with the types the model relies on, or refused with InvalidParameterValue; nothing else."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from emulator.errors import InvalidParameterValue
from emulator.models import (
    ENV_LIMIT,
    RUNTIMES,
    FunctionRegistry,
    _environment,
    _settings,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
FIELDS = ["Role", "Runtime", "Handler", "Description", "MemorySize", "Timeout",
          "Architectures", "Environment"]
plausible = {
    "Role": st.just("arn:aws:iam::123456789012:role/r"),
    "Runtime": st.sampled_from(sorted(RUNTIMES)),
    "Handler": st.sampled_from(["handler.handler", "a.b.c"]),
    "MemorySize": st.integers(0, 20_000),
    "Timeout": st.integers(-5, 1000),
    "Environment": st.fixed_dictionaries({"Variables": st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True), st.text(max_size=50),
        max_size=4)}),
}
params_st = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(json_values, *plausible.values()),
    max_size=len(FIELDS),
)


@given(params_st, st.booleans())
def test_settings_are_well_typed_or_refused(params: dict[str, Any], creating: bool) -> None:
    try:
        out = _settings(params, creating)
    except InvalidParameterValue as err:
        assert err.status == 400 and err.aws_type == "InvalidParameterValueException"
        assert len(err.message) < 300  # the value is named, cut short
        return
    for key in ("Role", "Runtime", "Handler", "Description"):
        assert key not in out or isinstance(out[key], str)
    assert "Runtime" not in out or out["Runtime"] in RUNTIMES
    assert "MemorySize" not in out or (type(out["MemorySize"]) is int
                                       and 128 <= out["MemorySize"] <= 10240)
    assert "Timeout" not in out or (type(out["Timeout"]) is int and 1 <= out["Timeout"] <= 900)
    env = out.get("Environment", {})
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    assert sum(len(k.encode()) + len(v.encode(errors="surrogatepass"))
               for k, v in env.items()) <= ENV_LIMIT
    if creating:
        assert {"Role", "Runtime", "Handler"} <= out.keys()


@given(json_values)
def test_environment_is_strings_or_refused(value: Any) -> None:
    try:
        env = _environment(value)
    except InvalidParameterValue:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())


@given(st.text(max_size=80))
def test_a_function_name_resolves_whole_or_is_refused(name: str) -> None:
    try:
        base = FunctionRegistry.resolve_name(name)
    except InvalidParameterValue:
        return
    assert base and "\n" not in base and ":" not in base and len(base) <= 64
