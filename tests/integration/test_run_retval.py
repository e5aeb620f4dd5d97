"""``run:`` answers ``OK:RETVAL(n)`` for every exit status, and jobs branch on ``n``.

End to end: the real coordinator (pyOpenSSL, selectors) drives real workers
(:func:`mu.worker.session.run`, stdlib ``ssl``) over mutual TLS on loopback, started by a
thread launcher as Lambda would start them. The job probes for a file with a command that
exits 3 while it is missing; an :class:`~mu.states.IfElseState` on the return value makes the
file and probes again, until the probe answers ``OK:RETVAL(0)`` (the 2016 loop-until-zero
pattern). Then the png2y4m job meets a corrupt PNG: the real binary exits 1 and the actor
fails with that status and the binary's message in its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mu.apps.png2y4m import ConfigState, Png2Y4MConfig
from mu.config import RunConfig
from mu.coordinator import Coordinator
from mu.protocol import Retval
from mu.states import CommandListState, IfElseState, TerminalState, Transition
from mu.tls import KeySet
from tests.integration.test_worker_coordinator import ThreadLauncher
from tests.worker_helpers import WAIT, moto_s3, tiny_png

PROBE = "run:test -e ##TMPDIR##/ready || exit 3"


class Done(TerminalState):
    pass


class Finish(CommandListState):
    commandlist = [(None, "quit:")]
    nextState = Done


class Branch(IfElseState):
    """Wait for the probe's ``OK:RETVAL(n)``; go on when n is 0, else make the file."""

    expect = "OK:RETVAL("
    consequentState = Finish

    def post_transition(self, msg: str | None) -> Transition:
        result = Retval.parse(msg or "")
        if result is None:
            return self.fail(f"{self.name}: {msg!r} is not a run: response")
        self.info.setdefault("retvals", []).append(result.status)
        return super().post_transition(msg)

    def testfn(self) -> bool:
        return bool(self.info["retvals"][-1] == 0)


class Fix(CommandListState):
    commandlist = [(None, "run:touch ##TMPDIR##/ready"), ("OK:RETVAL(0)", PROBE)]
    nextState = Branch


Branch.alternativeState = Fix


class Start(CommandListState):
    commandlist = [("OK:HELLO", "seti:nonblock:0"), PROBE]
    nextState = Branch


def coordinator(first: Any, job: Any, workers: int, keys: KeySet, launcher: Any) -> Coordinator:
    return Coordinator(
        first,
        job,
        RunConfig(num_actors=workers, port=0, run_deadline=WAIT, tls=True, retries=0),
        keys,
        launcher=launcher,
        function_name="retval",
        payload_fields={"bucket": "mu-retval", "region": "us-east-1", "timeout": 30},
    )


def states(timestamps: tuple[tuple[float, str], ...]) -> list[str]:
    return [name for _t, name in timestamps]


def test_a_job_branches_on_a_non_zero_return_value(keys: KeySet, tmp_path: Path) -> None:
    launcher = ThreadLauncher(tmp_path)
    try:
        result = coordinator(Start, None, 2, keys, launcher).run()
    finally:
        launcher.join()
    assert result.exit_status == 0, result.failed
    assert sorted(a.actor for a in result.actors) == [0, 1]
    for actor in result.actors:
        # exit 3 took the alternative branch, exit 0 the consequent one.
        assert states(actor.timestamps) == ["Start", "Branch", "Fix", "Branch", "Finish", "Done"]
    assert [s["exit"] for s in launcher.summaries] == ["quit", "quit"]
    # A non-zero exit is not a worker error: the workers sent no FAIL at all.
    assert [s["errors"] for s in launcher.summaries] == [0, 0]


def test_png2y4m_reports_a_corrupt_png_with_the_binary_status_and_message(
    keys: KeySet, png2y4m_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    function = tmp_path / "function"
    function.mkdir()
    (function / "png2y4m").symlink_to(png2y4m_binary)
    bucket = "mu-retval-png"
    cfg = Png2Y4MConfig(video="bad", bucket=bucket, informat="png16", frames=1)
    corrupt = bytearray(tiny_png(90))
    corrupt[40:48] = b"\xff" * 8  # inside IDAT: the CRC no longer matches
    launcher = ThreadLauncher(function)
    with moto_s3(monkeypatch, bucket) as s3:
        s3.put_object(Bucket=bucket, Key=cfg.input_key(1), Body=bytes(corrupt))
        try:
            result = coordinator(ConfigState, cfg, 1, keys, launcher).run()
        finally:
            launcher.join()
    assert result.exit_status != 0
    (failed,) = result.failed
    assert states(failed.timestamps)[-2:] == ["RetrieveAndRunState", "ErrorState"]
    key = f"s3://{bucket}/{cfg.input_key(1)}"
    assert failed.error is not None
    assert failed.error.startswith(f"png2y4m exited with status 1 converting {key}: "), failed
    assert "png2y4m: " in failed.error and "corrupt PNG" in failed.error, failed.error
    assert [s["errors"] for s in launcher.summaries] == [0]
