"""STYLE rule 12: the coordinator's Actor against the real worker command table, in memory.

The png2y4m job's state machine (:class:`mu.apps.png2y4m.ConfigState`) drives a real
:class:`mu.worker.commands.Worker` through a fake link that only moves framed bytes between
``Actor.data_to_send()`` / ``Actor.receive_data()`` and :func:`mu.worker.commands.dispatch`.
No sockets; S3 is a moto server over HTTP holding two tiny PNG frames; the command is the
real static png2y4m binary when it builds, else a shell stand-in with the same interface
(append every input frame matching the pattern to the output file, deleting each one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mu.actor import Actor, Failed, Finished, HelloReceived
from mu.apps.png2y4m import ConfigState, FinalState, Png2Y4MConfig
from mu.protocol import NEED_DATA, FrameDecoder, decode_text, encode_text
from mu.worker.commands import Worker, dispatch, initial_vals
from mu.worker.jobs import JobSet
from mu.worker.s3 import S3
from tests.worker_helpers import COMMAND, install_png2y4m, moto_s3, tiny_png

BUCKET = "mu-actor-pair"
TOKEN = "pair-token"


@pytest.fixture
def function_dir(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bool]:
    """A directory holding ``png2y4m``: the real binary if it builds, else the stand-in."""
    directory = tmp_path / "function"
    directory.mkdir()
    return directory, install_png2y4m(request, directory)


def test_png2y4m_conversation(
    function_dir: tuple[Path, bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd, real_binary = function_dir
    cfg = Png2Y4MConfig(video="tiny", bucket=BUCKET, informat="png16", frames=2)
    frames = {1: tiny_png(10), 2: tiny_png(200)}
    with moto_s3(monkeypatch, BUCKET) as s3:
        for number, data in frames.items():
            s3.put_object(Bucket=BUCKET, Key=cfg.input_key(number), Body=data)

        tmpdir = tmp_path / "private"
        tmpdir.mkdir()
        outbox: list[str] = []
        jobs = JobSet(outbox.append)
        worker = Worker(
            vals=initial_vals({"region": "us-east-1"}),
            command=COMMAND,
            tmpdir=str(tmpdir),
            cwd=str(cwd),
            send=outbox.append,
            jobs=jobs,
            s3=S3("us-east-1"),
        )
        actor = Actor(TOKEN)
        to_worker = FrameDecoder(peer="coordinator")
        transcript: list[tuple[str, str]] = []
        quit_seen = False

        def worker_says(text: str) -> None:
            transcript.append(("W", text))
            actor.receive_data(encode_text(text))

        try:
            worker_says(f"OK:HELLO:{TOKEN}")
            assert isinstance(actor.next_event(), HelloReceived)
            actor.start(0, ConfigState, config=cfg)
            event: object = NEED_DATA
            for _ in range(100):  # bounded: the whole job is ~20 exchanges
                pending = actor.data_to_send()
                if not pending:
                    break  # both ends are quiet
                to_worker.receive_data(pending)
                while isinstance(frame := to_worker.next_frame(), bytes):
                    command = decode_text(frame)
                    transcript.append(("C", command))
                    quit_seen = dispatch(worker, command) or quit_seen
                    while outbox:
                        worker_says(outbox.pop(0))
                if event is NEED_DATA:
                    event = actor.next_event()
        finally:
            jobs.close()
        uploaded = s3.get_object(Bucket=BUCKET, Key=cfg.output_key(0))["Body"].read()

    assert isinstance(event, Finished), (event, actor, transcript)
    assert not isinstance(event, Failed)
    assert isinstance(actor.state, FinalState)
    assert quit_seen

    t = str(tmpdir)
    chunk = f"{t}/00000000.y4m"
    rendered = f"./png2y4m -i -d -o {chunk} {t}/%08d.png"
    in1, in2 = cfg.input_key(1), cfg.input_key(2)
    out = cfg.output_key(0)
    commands = [text for side, text in transcript if side == "C"]
    assert commands == [
        "seti:nonblock:0",
        f"set:bucket:{BUCKET}",
        "set:cmdinfile:##TMPDIR##/%08d.png",
        "set:cmdoutfile:##TMPDIR##/00000000.y4m",
        "set:fromfile:##TMPDIR##/00000000.y4m",
        f"set:outkey:{out}",
        f"set:inkey:{in1}",
        "set:targfile:##TMPDIR##/00000001.png",
        "retrieve:",
        "run:",
        f"set:inkey:{in2}",
        "set:targfile:##TMPDIR##/00000002.png",
        "retrieve:",
        "run:",
        "upload:",
        "quit:",
    ]
    responses = [text for side, text in transcript if side == "W"]
    runs = [r for r in responses if r.startswith("OK:RETVAL(")]
    assert len(runs) == 2
    assert all(r.endswith(f":COMMAND({rendered})") for r in runs), runs
    assert [r for r in responses if not r.startswith("OK:RETVAL(")] == [
        f"OK:HELLO:{TOKEN}",
        "OK:SETI(nonblock)",
        "OK:SET(bucket)",
        "OK:SET(cmdinfile)",
        "OK:SET(cmdoutfile)",
        "OK:SET(fromfile)",
        "OK:SET(outkey)",
        "OK:SET(inkey)",
        "OK:SET(targfile)",
        f"OK:RETRIEVE({BUCKET}/{in1})",
        "OK:SET(inkey)",
        "OK:SET(targfile)",
        f"OK:RETRIEVE({BUCKET}/{in2})",
        f"OK:UPLOAD({BUCKET}/{out})",
    ]
    # -d deleted every PNG; only the chunk is left in the private directory.
    assert sorted(os.listdir(tmpdir)) == ["00000000.y4m"]
    if real_binary:
        assert uploaded.startswith(b"YUV4MPEG2")
    else:
        assert uploaded == frames[1] + frames[2]


def test_failing_run_puts_the_binary_message_in_the_error_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-zero exit status answers OK:RETVAL(n)...; the job fails with the status and the
    binary's output in the reason."""
    cfg = Png2Y4MConfig(video="tiny", bucket=BUCKET, informat="png16", frames=1)
    (tmp_path / "png2y4m").write_text("#!/bin/sh\necho 'cannot decode frame' >&2\nexit 2\n")
    (tmp_path / "png2y4m").chmod(0o755)
    with moto_s3(monkeypatch, BUCKET) as s3:
        s3.put_object(Bucket=BUCKET, Key=cfg.input_key(1), Body=tiny_png(1))
        outbox: list[str] = []
        jobs = JobSet(outbox.append)
        private = tmp_path / "private"
        private.mkdir()
        worker = Worker(
            vals=initial_vals({"region": "us-east-1"}),
            command=COMMAND,
            tmpdir=str(private),
            cwd=str(tmp_path),
            send=outbox.append,
            jobs=jobs,
            s3=S3("us-east-1"),
        )
        actor = Actor(TOKEN)
        actor.receive_data(encode_text(f"OK:HELLO:{TOKEN}"))
        actor.next_event()
        actor.start(0, ConfigState, config=cfg)
        decoder = FrameDecoder()
        event: Any = NEED_DATA
        try:
            for _ in range(100):
                decoder.receive_data(actor.data_to_send())
                while isinstance(frame := decoder.next_frame(), bytes):
                    dispatch(worker, decode_text(frame))
                    while outbox:
                        actor.receive_data(encode_text(outbox.pop(0)))
                event = actor.next_event()
                if event is not NEED_DATA:
                    break
        finally:
            jobs.close()
    assert isinstance(event, Failed)
    assert event.reason == (
        f"png2y4m exited with status 2 converting s3://{BUCKET}/{cfg.input_key(1)}: "
        "cannot decode frame"
    ), event.reason
