"""IVF, the container vpxenc writes, read and written in pure Python; chunks stitched into one.

Theory of operation
-------------------
An IVF file is a 32-byte header and then frames, each a 12-byte header and its payload
(all little-endian)::

    header  "DKIF"  version u16 (0)  header size u16 (32)  fourcc 4 bytes (VP90, VP80)
            width u16  height u16  rate u32  scale u32  frame count u32  unused u32
    frame   size u32  timestamp u64  payload (size bytes)

The time base is ``scale/rate`` seconds (our encoder writes the Y4M frame rate: rate 24,
scale 1, frame *n* at timestamp *n*).

Chunks encoded independently each start at a keyframe, so decoding them one after the
other is decoding the whole video: :func:`stitch` checks that the chunks agree (codec, size,
time base), then concatenates their frames, renumbering timestamps so that each chunk
starts where the one before it ended (the gaps inside a chunk are kept), and writes one
header with the total frame count. :func:`split` is its inverse, used to test it.

Nothing here touches a file or the network: bytes in, bytes out (:func:`read`, :func:`write`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

from mu.errors import ConfigError

__all__ = ["FRAME_HEADER", "HEADER_SIZE", "Frame", "Header", "Ivf", "read", "split", "stitch",
           "write"]

HEADER_SIZE = 32
FRAME_HEADER = 12
_HEADER = struct.Struct("<4sHH4sHHIIII")
_FRAME = struct.Struct("<IQ")


@dataclass(frozen=True)
class Header:
    """The file header's fields (the frame count is the number of frames, see :class:`Ivf`)."""

    fourcc: bytes
    width: int
    height: int
    rate: int
    scale: int

    def __post_init__(self) -> None:
        if len(self.fourcc) != 4:
            raise ConfigError(f"an IVF fourcc has 4 bytes, not {self.fourcc!r}")
        if not (0 <= self.width < 1 << 16 and 0 <= self.height < 1 << 16):
            raise ConfigError(f"IVF frame size {self.width}x{self.height} does not fit 16 bits")
        if not (0 < self.rate < 1 << 32 and 0 < self.scale < 1 << 32):
            raise ConfigError(f"IVF time base {self.scale}/{self.rate} is not a positive "
                              "32-bit fraction")


@dataclass(frozen=True)
class Frame:
    """One frame: its timestamp (in the time base) and its compressed payload."""

    pts: int
    data: bytes


@dataclass(frozen=True)
class Ivf:
    """A whole IVF file."""

    header: Header
    frames: tuple[Frame, ...]


def read(data: bytes, name: str = "IVF data") -> Ivf:
    """Parse a whole IVF file.

    Args:
        data: the file's bytes.
        name: how errors name the file.

    Raises:
        ConfigError: not IVF, or cut short (the message says where).
    """
    if len(data) < HEADER_SIZE:
        raise ConfigError(f"{name} is {len(data)} bytes, shorter than an IVF header (32)")
    magic, version, size, fourcc, width, height, rate, scale, count, _ = _HEADER.unpack_from(data)
    if magic != b"DKIF" or version != 0 or size != HEADER_SIZE:
        raise ConfigError(f"{name} is not an IVF file (header {data[:8]!r})")
    header = Header(fourcc, width, height, rate, scale)
    frames: list[Frame] = []
    pos = HEADER_SIZE
    while pos < len(data):
        if pos + FRAME_HEADER > len(data):
            raise ConfigError(f"{name} ends inside the header of frame {len(frames)} "
                              f"(byte {pos} of {len(data)})")
        length, pts = _FRAME.unpack_from(data, pos)
        start = pos + FRAME_HEADER
        if start + length > len(data):
            raise ConfigError(f"{name} ends inside frame {len(frames)}: {length} bytes "
                              f"announced, {len(data) - start} left")
        frames.append(Frame(pts, data[start:start + length]))
        pos = start + length
    if count != len(frames):
        raise ConfigError(f"{name} says it has {count} frames but holds {len(frames)}")
    return Ivf(header, tuple(frames))


def write(ivf: Ivf) -> bytes:
    """The bytes of ``ivf`` (the header's frame count is the number of frames)."""
    h = ivf.header
    parts = [_HEADER.pack(b"DKIF", 0, HEADER_SIZE, h.fourcc, h.width, h.height, h.rate,
                          h.scale, len(ivf.frames), 0)]
    for frame in ivf.frames:
        parts.append(_FRAME.pack(len(frame.data), frame.pts))
        parts.append(frame.data)
    return b"".join(parts)


def stitch(chunks: Sequence[Ivf], names: Sequence[str] = ()) -> Ivf:
    """One IVF of ``chunks`` played one after the other.

    Each chunk's timestamps are shifted so that it starts one tick after the previous
    chunk's last frame (the first chunk starts at 0); gaps inside a chunk are kept.

    Args:
        chunks: the chunks in order; each must start with a keyframe (the encoder's doing).
        names: how errors name the chunks (default: chunk 0, chunk 1, ...).

    Raises:
        ConfigError: no chunks, or chunks that differ in codec, frame size or time base.
    """
    if not chunks:
        raise ConfigError("no chunks to stitch")
    labels = list(names) or [f"chunk {i}" for i in range(len(chunks))]
    first = chunks[0].header
    frames: list[Frame] = []
    base = 0
    for label, chunk in zip(labels, chunks, strict=True):
        if chunk.header != first:
            raise ConfigError(f"{label} does not match {labels[0]}: {_describe(chunk.header)} "
                              f"against {_describe(first)}")
        if not chunk.frames:
            continue
        start = min(frame.pts for frame in chunk.frames)
        frames.extend(Frame(base + frame.pts - start, frame.data) for frame in chunk.frames)
        base += max(frame.pts for frame in chunk.frames) - start + 1
    return Ivf(first, tuple(frames))


def split(ivf: Ivf, sizes: Sequence[int]) -> list[Ivf]:
    """``ivf`` cut into chunks of ``sizes`` frames (the rest, if any, is a last chunk), each
    with timestamps from 0 as an encoder would write them; :func:`stitch` undoes it."""
    chunks: list[Ivf] = []
    pos = 0
    for size in [*sizes, len(ivf.frames)]:
        part = ivf.frames[pos:pos + size]
        if not part:
            break
        start = part[0].pts
        chunks.append(replace(ivf, frames=tuple(Frame(f.pts - start, f.data) for f in part)))
        pos += len(part)
    return chunks


def _describe(h: Header) -> str:
    return (f"{h.fourcc.decode('latin-1')} {h.width}x{h.height} at {h.rate}/{h.scale} "
            "frames per second")
