"""Y4M reading and writing, and the reference R'G'B' -> Y'CbCr conversion, in numpy.

Theory of operation
-------------------
This is the yardstick for the ``png2y4m`` binary: the same BT.709 studio-range conversion
(Y 16..235, Cb/Cr 16..240) done in float64 on samples normalised to 0..1
(``v / (2**depth - 1)``), chroma from the box average of R'G'B' over 2x2 (4:2:0) or 2x1
(4:2:2) pixels with the last row/column replicated for odd sizes, then rounded to nearest.
The binary without dithering matches it within one code value.

A Y4M stream is a header line ``YUV4MPEG2 W.. H.. F.. Ip A.. C..`` then, per frame,
``FRAME`` and the Y, Cb and Cr planes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "KB",
    "KR",
    "Y4M",
    "Plane",
    "Y4MError",
    "convert_frame",
    "psnr",
    "read_y4m",
    "rgb_to_ycbcr_float",
    "write_y4m",
]

KR, KB = 0.2126, 0.0722
KG = 1.0 - KR - KB
Plane = npt.NDArray[np.uint8]
FloatPlane = npt.NDArray[np.float64]
_SUBSAMPLING = {"420": (2, 2), "422": (2, 1), "444": (1, 1)}
_TAGS = {"420": "C420jpeg", "422": "C422jpeg", "444": "C444"}


class Y4MError(ValueError):
    """A Y4M stream is malformed; the message says where."""


@dataclass
class Y4M:
    """A decoded Y4M stream."""

    width: int
    height: int
    chroma: str = "420"
    fps: tuple[int, int] = (24, 1)
    aspect: tuple[int, int] = (0, 0)
    frames: list[tuple[Plane, Plane, Plane]] = field(default_factory=list)

    @property
    def chroma_size(self) -> tuple[int, int]:
        """(width, height) of the Cb and Cr planes."""
        sx, sy = _SUBSAMPLING[self.chroma]
        return -(-self.width // sx), -(-self.height // sy)


def _chroma_of(tag: str) -> str:
    for name, full in _TAGS.items():
        if tag == full or tag == full[:4]:
            return name
    raise Y4MError(f"unsupported chroma {tag!r}")


def read_y4m(path: str | os.PathLike[str]) -> Y4M:
    """Read a whole Y4M file.

    Raises:
        Y4MError: bad header, or a truncated or malformed frame (its number is named).
    """
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"\n")
    if end < 0 or not data.startswith(b"YUV4MPEG2 "):
        raise Y4MError(f"{os.fspath(path)}: not a Y4M stream")
    fields = data[10:end].decode("ascii", "replace").split()
    video = Y4M(width=0, height=0)
    for tok in fields:
        key, value = tok[0], tok[1:]
        if key == "W":
            video.width = int(value)
        elif key == "H":
            video.height = int(value)
        elif key == "C":
            video.chroma = _chroma_of(tok)
        elif key == "F":
            n, d = value.split(":")
            video.fps = (int(n), int(d))
        elif key == "A":
            n, d = value.split(":")
            video.aspect = (int(n), int(d))
    if video.width <= 0 or video.height <= 0:
        raise Y4MError(f"{os.fspath(path)}: header lacks a size")
    cw, ch = video.chroma_size
    luma, chroma = video.width * video.height, cw * ch
    pos = end + 1
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0 or not data.startswith(b"FRAME", pos):
            raise Y4MError(f"{os.fspath(path)}: frame {len(video.frames)} lacks its FRAME line")
        pos = nl + 1
        if pos + luma + 2 * chroma > len(data):
            raise Y4MError(f"{os.fspath(path)}: frame {len(video.frames)} is truncated")
        buf = np.frombuffer(data, np.uint8, luma + 2 * chroma, pos)
        y = buf[:luma].reshape(video.height, video.width)
        cb = buf[luma : luma + chroma].reshape(ch, cw)
        cr = buf[luma + chroma :].reshape(ch, cw)
        video.frames.append((y, cb, cr))
        pos += luma + 2 * chroma
    return video


def write_y4m(path: str | os.PathLike[str], video: Y4M) -> None:
    """Write ``video`` as a Y4M file."""
    header = (
        f"YUV4MPEG2 W{video.width} H{video.height} F{video.fps[0]}:{video.fps[1]} Ip "
        f"A{video.aspect[0]}:{video.aspect[1]} {_TAGS[video.chroma]}\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode())
        for planes in video.frames:
            f.write(b"FRAME\n")
            for plane in planes:
                f.write(np.ascontiguousarray(plane, dtype=np.uint8).tobytes())


def _box(plane: FloatPlane, sx: int, sy: int) -> FloatPlane:
    """Average ``plane`` over sx*sy boxes, replicating the last row/column."""
    h, w = plane.shape
    if sy == 2 and h % 2:
        plane = np.vstack([plane, plane[-1:]])
    if sx == 2 and w % 2:
        plane = np.hstack([plane, plane[:, -1:]])
    if sy == 2:
        plane = (plane[0::2] + plane[1::2]) / 2
    if sx == 2:
        plane = (plane[:, 0::2] + plane[:, 1::2]) / 2
    return plane


def rgb_to_ycbcr_float(
    rgb: npt.NDArray[np.float64], chroma: str = "420"
) -> tuple[FloatPlane, FloatPlane, FloatPlane]:
    """The exact (unrounded) Y'CbCr code values of normalised R'G'B' (``(h, w, 3)``, 0..1)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16.0 + 219.0 * (KR * r + KG * g + KB * b)
    sx, sy = _SUBSAMPLING[chroma]
    rs, gs, bs = (_box(c, sx, sy) for c in (r, g, b))
    ys = KR * rs + KG * gs + KB * bs
    cb = 128.0 + 112.0 * (bs - ys) / (1.0 - KB)
    cr = 128.0 + 112.0 * (rs - ys) / (1.0 - KR)
    return y, cb, cr


def convert_frame(
    rgb: npt.NDArray[np.integer], bitdepth: int, chroma: str = "420"
) -> tuple[Plane, Plane, Plane]:
    """Reference conversion of integer R'G'B' samples (``(h, w, 3)``) to rounded planes."""
    if not 1 <= bitdepth <= 16:
        raise ValueError(f"bit depth {bitdepth} is not between 1 and 16")
    norm = rgb.astype(np.float64) / float((1 << bitdepth) - 1)
    planes = rgb_to_ycbcr_float(norm, chroma)
    y, cb, cr = (np.clip(np.floor(p + 0.5), 0, 255).astype(np.uint8) for p in planes)
    return y, cb, cr


def psnr(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` when equal)."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)
