"""The error an environment posts on the Runtime API, brought into Lambda's shape."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from emulator.runner import _error_body

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8)


_POSTED = st.fixed_dictionaries({}, optional={
    "errorMessage": _JSON, "errorType": _JSON, "stackTrace": _JSON, "requestId": _JSON})


@given(body=st.binary(max_size=200) | (_JSON | _POSTED).map(lambda v: json.dumps(v).encode()),
       kind=st.text(max_size=20), request_id=st.text(max_size=40))
def test_any_posted_error_becomes_lambdas_shape(body: bytes, kind: str, request_id: str) -> None:
    error = _error_body(body, {"lambda-runtime-function-error-type": kind}, request_id)
    assert {"errorMessage", "errorType", "stackTrace"} <= error.keys()
    assert isinstance(error["errorMessage"], str) and isinstance(error["errorType"], str)
    assert error["errorType"] and isinstance(error["stackTrace"], list)
    if request_id:
        assert isinstance(error["requestId"], str) and error["requestId"]
    json.dumps(error)  # it can be answered


def test_awslambdarics_own_error_is_kept_as_it_is() -> None:
    posted = {"errorMessage": "no good", "errorType": "ValueError", "requestId": "",
              "stackTrace": ["  File x"]}
    error = _error_body(json.dumps(posted).encode(),
                        {"lambda-runtime-function-error-type": "ValueError"}, "rid")
    assert error == dict(posted, requestId="rid")


def test_a_body_that_is_not_json_is_its_message() -> None:
    error = _error_body(b"it broke", {"lambda-runtime-function-error-type": "Custom"}, "")
    assert error == {"errorMessage": "it broke", "errorType": "Custom", "stackTrace": []}
