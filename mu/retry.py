"""When a failed attempt is worth a new worker: a pure retry policy.

Theory of operation
-------------------
An actor's attempt fails for one of two kinds of reason:

* **transient**: something that another worker, a moment later, may well not meet. The
  worker was lost (its connection closed or broke, it never said hello, it stopped reading:
  a crash, a killed or frozen Lambda), it ran past its ``-m`` deadline, S3 or AWS answered
  5xx, throttled, timed out or could not be reached, a transfer arrived damaged, the
  function's ``/tmp`` was full, or the command was killed by a signal.
  A worker that broke the protocol (a malformed frame, an answer its state did not expect
  or could not handle) is one broken or hostile peer: another worker may well not be, so
  that is transient too.
* **permanent**: the same commands would fail the same way on any worker: the worker
  answered ``FAIL(...)`` for a command it cannot carry out (``no such command``, ``no bucket
  set``, a bad template or argument, an object that does not exist, access denied), a
  command exited with a non-zero status of its own, or the job's states cannot go on (a
  state with no next state, a machine that never waits, a first state that raises).

:func:`decide` turns one failed attempt into a :class:`RetryDecision`: retry only a transient
failure, only while retries are left (``--retries K`` gives K retries, K + 1 attempts) and the
run is not stopping. The decision says why, in words the final report prints.

The policy is pure (text and numbers in, a decision out; no clock, no sockets), so it is
property-tested (``tests/unit/test_retry.py``) and the coordinator only applies it.
Whatever the worker itself refused is permanent unless its text names a transient cause;
whatever else ended the attempt (the connection, the peer, the coordinator) is transient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["RetryDecision", "classify", "decide"]

_SIGNAL_STATUS: Final = 128  # a shell reports death by signal N as status 128 + N

# Transient causes, matched in the failure text (case-insensitive), in this order.
_TRANSIENT: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(pattern, re.IGNORECASE), why)
    for pattern, why in (
        (r"connection closed|connection reset|broken pipe|EOF|TLS|SSL|ssl error",
         "the worker was lost"),
        (r"no hello within|never arrived|stopped reading", "the worker was lost"),
        (r"deadline of [\d.]+ s passed|timed out|\btimeout\b|Timeout(?:Error|Exception)?\b",
         "a timeout"),
        (r"SlowDown|Throttl|TooManyRequests|RequestLimitExceeded|rate exceeded",
         "throttling"),
        (r"InternalError|ServiceUnavailable|\b50[0-4]\b|ServerError|BadGateway",
         "an AWS 5xx answer"),
        (r"EndpointConnectionError|Could not connect|ConnectionClosedError",
         "AWS could not be reached"),
        (r"checksum mismatch", "a transfer arrived damaged"),
        (r"No space left|disk full|ENOSPC", "the function's /tmp was full"),
    )
)

_REFUSED: Final = re.compile(r"(?:worker failed in [^:]*: )?(FAIL\(.*)", re.DOTALL)
"""The worker's FAIL answer, bare or as a state reports it (``worker failed in S: FAIL(...)``)."""

_JOB_BROKEN: Final = re.compile(r"has no next state|transitions without waiting")

_RETVAL: Final = re.compile(
    r"RETVAL\((-?\d+)\)|exit(?:ed with)? (?:status|code) (-?\d+)|killed by signal (\d+)",
    re.IGNORECASE,
)

_STATE_RAISED: Final = re.compile(r"\S+ raised \w+ (on start|handling )")
"""A state's own exception (:mod:`mu.actor`): ``S raised E on start: ...`` or ``S raised E
handling '<message>': ...``; the quoted message is the worker's, not the cause."""

_S3_URL: Final = re.compile(r"s3://\S+")


@dataclass(frozen=True)
class RetryDecision:
    """What to do with one failed attempt.

    Attributes:
        retry: give the actor to a new worker.
        why: the reason, as the report prints it ("retried: the worker was lost",
            "not retried: ... cannot change on retry", "not retried: 2 retries used").
    """

    retry: bool
    why: str


def classify(reason: str, by_coordinator: bool = False) -> tuple[bool, str]:
    """Whether a failure can be transient, and its cause in words.

    Args:
        reason: the failure text (the worker's answer, or why the coordinator ended it).
        by_coordinator: the coordinator ended the attempt itself (a deadline, a broken or
            silent connection): always transient.

    Returns:
        ``(transient, cause)``.
    """
    if by_coordinator:  # its own texts: a deadline, a broken or silent connection
        for pattern, why in _TRANSIENT:
            if pattern.search(reason):
                return True, why
        return True, "the coordinator ended the attempt"
    refused = _REFUSED.match(reason)
    if refused is not None:  # the worker's own FAIL(...) answer
        answer = refused.group(1)
        status = _exit_status(answer)
        if status is not None:
            return status
        # Transient only if it reports one of the causes above (an S3 5xx, throttling, a
        # timeout, a full disk), never for its own refusal; bucket and key names are the
        # user's words, not the cause (a video named "timeout-test" times nothing out).
        cause = _S3_URL.sub("", answer)
        for pattern, why in _TRANSIENT[2:]:
            if pattern.search(cause):
                return True, why
        return False, "the worker refused the command"
    raised = _STATE_RAISED.match(reason)
    if raised is not None:  # the job's own code raised: the same on any worker at start
        if raised.group(1) == "on start":
            return False, "the job's first state raised an error"
        return True, "the job's states could not handle the worker's message"
    expected, got, answer = reason.partition(", got ")
    if got:  # "S expected 'E', got 'A'": an answer its state did not wait for
        if "RETVAL(" in expected and answer.startswith("'OK:RETVAL("):
            status = _exit_status(answer)
            if status is not None:
                return status
        return True, "the worker broke the protocol"
    if _JOB_BROKEN.search(reason):
        return False, "the job's states cannot go on"
    if not reason.startswith("frame "):  # not the raw bytes of a malformed frame
        status = _exit_status(reason)
        if status is not None:
            return status
    for pattern, why in _TRANSIENT:
        if pattern.search(reason):
            return True, why
    return True, "the worker broke the protocol"


def _exit_status(text: str) -> tuple[bool, str] | None:
    """The verdict for a command's exit status named in ``text`` (None: none, or 0)."""
    found = _RETVAL.search(text)
    if found and found.group(3):
        value = -int(found.group(3))
    else:
        value = int(found.group(1) or found.group(2)) if found else 0
    if value < 0 or value > _SIGNAL_STATUS:
        return True, f"the command was killed by a signal (status {value})"
    if value:
        return False, f"the command exited with status {value}"
    return None


def decide(
    reason: str, attempt: int, retries: int, *, by_coordinator: bool = False,
    stopping: bool = False,
) -> RetryDecision:
    """The retry decision for attempt number ``attempt`` (1-based) of an actor that failed.

    Args:
        reason: why the attempt failed.
        attempt: which attempt failed, counting from 1.
        retries: the retries the run allows (``--retries``); attempts are at most
            ``retries + 1``.
        by_coordinator: the coordinator ended the attempt (see :func:`classify`).
        stopping: the run is ending (run deadline, stop): nothing more is launched.

    Returns:
        the decision and why.
    """
    transient, cause = classify(reason, by_coordinator)
    if not transient:
        return RetryDecision(False, f"not retried: {cause}, which cannot change on retry")
    if stopping:
        return RetryDecision(False, f"not retried ({cause}): the run was ending")
    if attempt > retries:
        used = "--retries 0" if retries == 0 else f"all {retries} retries used"
        return RetryDecision(False, f"not retried ({cause}): {used}")
    return RetryDecision(True, f"retried: {cause}")
