"""The encode job: PNG frames (or Y4M chunks) in S3 -> one IVF chunk per worker in S3.

Theory of operation
-------------------
The worker that plays chunk ``c`` encodes frames ``1 + f*c ... f*(c+1)`` with the static
``vpxenc`` (function/vpxenc) and uploads ``s3://BUCKET/{video}-{codec}_{f:02d}/%08d.ivf``
numbered ``c``. Its input is either

* PNG frames ``{video}-{informat}/%08d.png`` (numbered from 1, as ``mu png2y4m`` reads
  them): the worker retrieves its frames into its private directory, turns them into one
  Y4M chunk with one ``png2y4m`` run, then encodes that chunk, all in one invocation, so no
  Y4M goes through S3; or
* Y4M chunks ``{video}-y4m_{f:02d}/%08d.y4m`` (what ``mu png2y4m`` writes), with
  ``-i y4m``: the worker retrieves its chunk and encodes it.

The function carries both programs (``mu lambdaize png2y4m --also vpxenc``); the states name
each in their ``run:`` commands (``./png2y4m ...``, ``./vpxenc ...``), so they do not depend
on the function's own command. The machine::

    PngConfigState --> FrameLoopState --(frame < f)--> FrameState (retrieve) --+
                             ^                                                 |
                             +-------------------------------------------------+
                             +--(done)--> ConvertState (png2y4m) --> EncodeState (vpxenc)
                                              --> UploadState --> FinalState
    Y4MConfigState (retrieve the Y4M chunk) --> EncodeState --> ...

One png2y4m run per chunk, not one per frame as ``mu png2y4m`` does: one process fewer
for each frame but the first (the output is the same bytes).

A program that exits non-zero fails the actor with its status and its own message. Every
chunk starts with a keyframe, so the chunks played one after another are the video:
:mod:`mu.ivf` stitches them (:func:`mu.apps.encode_run.EncodeJob.download_outputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mu.apps.png2y4m import OUTPUT_SHOWN, FinalState, Png2Y4MConfig, UploadState
from mu.errors import ConfigError
from mu.protocol import Retval
from mu.states import CommandListState, ForLoopState, MachineState, Transition

__all__ = [
    "CODECS",
    "ConvertState",
    "EncodeConfig",
    "EncodeState",
    "FinalState",
    "FrameLoopState",
    "FrameState",
    "PngConfigState",
    "Y4MConfigState",
    "first_state",
]

CODECS = ("vp9", "vp8")
Y4M_INPUT = "y4m"
"""``-i y4m``: the inputs are Y4M chunks, not PNG frames."""
CHUNK_Y4M = "##TMPDIR##/chunk.y4m"


@dataclass(frozen=True)
class EncodeConfig(Png2Y4MConfig):
    """What an encode run encodes (the 2016 ``-v -b -i -f`` flags) and how.

    Attributes:
        codec: ``vp9`` or ``vp8``.
        realtime: the realtime deadline (``--rt``) instead of good quality.
        cpu_used: speed against quality (``--cpu-used``).
        cq_level: constant quality 0-63 (used unless ``target_bitrate`` is given).
        target_bitrate: kbit/s, variable bitrate instead of constant quality.
        threads: encoder threads in each worker.
    """

    codec: str = "vp9"
    realtime: bool = False
    cpu_used: int = 4
    cq_level: int = 32
    target_bitrate: int | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.codec not in CODECS:
            raise ConfigError(f"--codec {self.codec!r}: choose vp9 or vp8")
        limit = 16 if self.codec == "vp8" else 9
        if not -limit <= self.cpu_used <= limit:
            raise ConfigError(f"--cpu-used {self.cpu_used} is outside {self.codec}'s "
                              f"-{limit}..{limit}")
        if self.codec == "vp8" and self.realtime and self.cpu_used == 0:
            raise ConfigError("--cpu-used 0 with --codec vp8 --rt: give a speed 1..16")
        if not 0 <= self.cq_level <= 63:
            raise ConfigError(f"--cq-level {self.cq_level} is outside 0..63")
        if self.target_bitrate is not None and self.target_bitrate < 1:
            raise ConfigError(f"--target-bitrate {self.target_bitrate} must be >= 1 kbit/s")
        if not 1 <= self.threads <= 64:
            raise ConfigError(f"--threads {self.threads} is outside 1..64")

    @property
    def y4m_input(self) -> bool:
        return self.informat == Y4M_INPUT

    @property
    def input_prefix(self) -> str:
        if self.y4m_input:
            return f"{self.video}-y4m_{self.frames:02d}/"
        return super().input_prefix

    def chunk_input_key(self, chunk: int) -> str:
        """S3 key of the Y4M chunk ``chunk`` encodes (``-i y4m``)."""
        return f"{self.input_prefix}{chunk:08d}.y4m"

    @property
    def output_prefix(self) -> str:
        return f"{self.video}-{self.codec}_{self.frames:02d}/"

    def output_key(self, chunk: int) -> str:
        return f"{self.output_prefix}{chunk:08d}.ivf"

    @property
    def video_key(self) -> str:
        """S3 key of the stitched video."""
        return f"{self.video}.ivf"

    def encoder_args(self) -> str:
        """The encoder settings as vpxenc's options."""
        rate = (f"--target-bitrate {self.target_bitrate}" if self.target_bitrate is not None
                else f"--cq-level {self.cq_level}")
        deadline = "--rt" if self.realtime else "--good"
        return (f"--codec {self.codec} {deadline} --cpu-used {self.cpu_used} {rate} "
                f"--threads {self.threads}")


def _failure(msg: str | None, program: str, what: str) -> str | None:
    """The failure reason when ``msg`` says ``program`` exited non-zero, else None."""
    result = Retval.parse(msg) if msg is not None else None
    if result is None or result.status == 0:
        return None
    output = result.output.strip()
    if len(output) > OUTPUT_SHOWN:
        output = f"{output[:OUTPUT_SHOWN]}... ({len(output)} chars)"
    how = (f"was killed by signal {-result.status}" if result.status < 0
           else f"exited with status {result.status}")
    return f"{program} {how} {what}: {output or '(no output)'}"


class EncodeState(CommandListState):
    """Encode the chunk's Y4M into the chunk's IVF."""

    extra = "(encoding)"
    nextState = UploadState

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        cfg: EncodeConfig = self.config
        self.commandlist = [
            (None, f"run:./vpxenc {cfg.encoder_args()} -o ##TMPDIR##/{self.actorNum:08d}.ivf "
                   f"{CHUNK_Y4M}"),
            ("OK:RETVAL(0)", None),
        ]

    def transition(self, msg: str | None) -> Transition:
        reason = _failure(msg, "vpxenc", f"encoding chunk {self.actorNum}")
        if reason is not None:
            return self.fail(reason)
        return super().transition(msg)


class ConvertState(CommandListState):
    """Turn the chunk's PNG frames into its Y4M with one ``./png2y4m`` run."""

    extra = "(converting)"
    nextState = EncodeState

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.commandlist = [
            (None, f"run:./png2y4m -d -o {CHUNK_Y4M} ##TMPDIR##/%08d.png"),
            ("OK:RETVAL(0)", None),
        ]

    def transition(self, msg: str | None) -> Transition:
        reason = _failure(msg, "png2y4m", f"converting the frames of chunk {self.actorNum}")
        if reason is not None:
            return self.fail(reason)
        return super().transition(msg)


class FrameState(CommandListState):
    """Retrieve one PNG frame into the private directory."""

    extra = "(retrieving)"

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        cfg: EncodeConfig = self.config
        frame = cfg.frames_of(self.actorNum)[self.info["frame"]]
        self.commandlist = [
            (None, f"set:inkey:{cfg.input_key(frame)}"),
            f"set:targfile:##TMPDIR##/{frame:08d}.png",
            "retrieve:",
            None,
        ]


class FrameLoopState(ForLoopState):
    extra = "(next frame)"
    iterKey = "frame"
    loopState = FrameState
    exitState = ConvertState

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.iterFin = self.config.frames


FrameState.nextState = FrameLoopState


def _configure(state: MachineState) -> list[Any]:
    cfg: EncodeConfig = state.config
    ivf = f"##TMPDIR##/{state.actorNum:08d}.ivf"
    return [
        ("OK:HELLO", "seti:nonblock:0"),
        f"set:bucket:{cfg.bucket}",
        f"set:fromfile:{ivf}",
        f"set:outkey:{cfg.output_key(state.actorNum)}",
    ]


class PngConfigState(CommandListState):
    """The first state with PNG input: configure the worker for its chunk."""

    extra = "(configuring)"
    nextState = FrameLoopState

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.commandlist = [*_configure(self), None]


class Y4MConfigState(CommandListState):
    """The first state with Y4M input: configure, then retrieve the chunk."""

    extra = "(configuring, retrieving the Y4M chunk)"
    nextState = EncodeState

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        cfg: EncodeConfig = self.config
        self.commandlist = [
            *_configure(self),
            f"set:inkey:{cfg.chunk_input_key(self.actorNum)}",
            f"set:targfile:{CHUNK_Y4M}",
            "retrieve:",
            None,
        ]


def first_state(cfg: EncodeConfig) -> type[CommandListState]:
    """The state that receives each worker's hello, by the kind of input."""
    return Y4MConfigState if cfg.y4m_input else PngConfigState
