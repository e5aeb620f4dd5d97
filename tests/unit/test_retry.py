"""The retry policy (mu.retry): retry only what can be transient, never past --retries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mu.retry import classify, decide

TRANSIENT = [
    ("connection closed by worker in RetrieveAndRunState", False),
    ("deadline of 10 s passed", True),
    ("worker stopped reading: 9000000 bytes queued, limit 8388608", True),
    ("TLS error from 127.0.0.1:5: bad record mac", True),
    ("worker failed in UploadState: FAIL(upload s3://b/k: SlowDown: Please reduce)", False),
    ("worker failed in RetrieveState: FAIL(retrieve s3://b/k: InternalError: oops)", False),
    ("worker failed in RetrieveState: FAIL(retrieve s3://b/k: ReadTimeoutError: Read "
     "timeout on endpoint URL)", False),
    ("worker failed in RetrieveState: FAIL(retrieve s3://b/k: checksum mismatch: ...)", False),
    ("worker failed in X: FAIL(disk full)", False),
    ("worker failed in X: FAIL(RETVAL(-9):OUTPUT():COMMAND(./png2y4m))", False),
    ("worker failed in X: FAIL(RETVAL(137):OUTPUT(Killed):COMMAND(./png2y4m))", False),
    ("something the coordinator saw", True),
    ("RetrieveState expected 'OK:RETRIEV', got 'OK:SET(x)'", False),  # a broken peer
    ("frame header b'x0000000000 ' is not 12 decimal digits and a space", False),
    ("FuzzJob expected 'OK:RETVAL(0)', got ''", False),
    ("FuzzJob expected 'OK:SET', got 'OK:RETVAL(0):OUTPUT():COMMAND(x)'", False),
    ("png2y4m was killed by signal 9 converting s3://b/k: Killed", False),
    # A state that could not handle what a worker sent: the quoted message is the worker's
    # (its exit status or words are not the cause), and another worker may not send it.
    ("Parse raised ValueError handling 'OK:RETVAL(1):OUTPUT(x)': invalid literal", False),
]
PERMANENT = [
    "worker failed in ConfigState: FAIL(retrieve: no bucket set)",
    "worker failed in ConfigState: FAIL(no such command 'frob')",
    "worker failed in RunState: FAIL(run: template ##NOPE## is not known)",
    "worker failed in RetrieveState: FAIL(retrieve s3://b/k: NoSuchKey: gone)",
    "worker failed in RetrieveState: FAIL(retrieve s3://b/k: AccessDenied: no)",
    "worker failed in RunState: FAIL(RETVAL(1):OUTPUT(bad PNG):COMMAND(./png2y4m))",
    "png2y4m exited with status 2: not a PNG",
    "RetrieveAndRunState expected 'OK:RETVAL(0)', got 'OK:RETVAL(1):OUTPUT(bad):COMMAND(x)'",
    "the command failed with exit code 3",
    "FinalState has no next state",
    "LoopState made 10000 transitions without waiting",
    "ConfigState raised KeyError on start: 'bucket'",
    # Bucket and key names are the user's words: "timeout" or "500" in them is no cause.
    "worker failed in R: FAIL(retrieve s3://b/timeout-500-png16/00000001.png: NoSuchKey: x)",
]


@pytest.mark.parametrize(("reason", "by_coordinator"), TRANSIENT)
def test_transient(reason: str, by_coordinator: bool) -> None:
    transient, cause = classify(reason, by_coordinator)
    assert transient, cause
    decision = decide(reason, 1, 2, by_coordinator=by_coordinator)
    assert decision.retry and decision.why == f"retried: {cause}"


@pytest.mark.parametrize("reason", PERMANENT)
def test_permanent_is_never_retried(reason: str) -> None:
    decision = decide(reason, 1, 5)
    assert not decision.retry
    assert decision.why.startswith("not retried: ") and "cannot change on retry" in decision.why


def test_the_reasons_are_named() -> None:
    assert decide("deadline of 3 s passed", 3, 2).why == (
        "not retried (a timeout): all 2 retries used")
    assert decide("connection closed by worker in X", 1, 0).why == (
        "not retried (the worker was lost): --retries 0")
    assert decide("connection closed by worker in X", 1, 2, stopping=True).why == (
        "not retried (the worker was lost): the run was ending")
    assert decide("worker failed in X: FAIL(retrieve: no bucket set)", 1, 2).why == (
        "not retried: the worker refused the command, which cannot change on retry")
    assert decide("FAIL(RETVAL(3):OUTPUT():COMMAND(x))", 1, 2).why == (
        "not retried: the command exited with status 3, which cannot change on retry")
    assert decide("png2y4m was killed by signal 9 converting s3://b/k", 1, 2).why == (
        "retried: the command was killed by a signal (status -9)")
    assert decide("Parse raised ValueError handling 'OK:RETVAL(1)': x", 1, 2).why == (
        "retried: the job's states could not handle the worker's message")


reasons = st.one_of(
    st.text(max_size=80),
    st.sampled_from([r for r, _ in TRANSIENT] + PERMANENT),
    st.builds(lambda a, b: a + b, st.sampled_from(PERMANENT), st.text(max_size=20)),
)


@given(reason=reasons, by_coordinator=st.booleans(), attempt=st.integers(1, 20),
       retries=st.integers(0, 10), stopping=st.booleans())
def test_policy_properties(reason: str, by_coordinator: bool, attempt: int, retries: int,
                           stopping: bool) -> None:
    decision = decide(reason, attempt, retries, by_coordinator=by_coordinator,
                      stopping=stopping)
    transient, cause = classify(reason, by_coordinator)
    # Pure: the same question, the same answer.
    assert decision == decide(reason, attempt, retries, by_coordinator=by_coordinator,
                              stopping=stopping)
    # Retry exactly when it can help, the run goes on, and retries are left.
    assert decision.retry == (transient and not stopping and attempt <= retries)
    assert cause in decision.why and "\n" not in decision.why
    assert decision.why.startswith("retried: " if decision.retry else "not retried")
    # The coordinator ending an attempt (deadline, lost connection) is always transient.
    if by_coordinator:
        assert transient


@given(reason=reasons, by_coordinator=st.booleans(), retries=st.integers(0, 10))
def test_attempts_are_bounded(reason: str, by_coordinator: bool, retries: int) -> None:
    """An actor that fails the same way every time gets at most retries + 1 attempts, and
    exactly that many when the failure is transient."""
    attempts = 0
    while True:
        attempts += 1
        if not decide(reason, attempts, retries, by_coordinator=by_coordinator).retry:
            break
        assert attempts <= retries
    transient, _ = classify(reason, by_coordinator)
    assert attempts == (retries + 1 if transient else 1)
