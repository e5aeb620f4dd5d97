"""Y4M (YUV4MPEG2) streams and the reference R'G'B' -> Y'CbCr conversion of png2y4m.

Theory of operation
-------------------
This module is the executable specification that the C ``png2y4m`` binary is tested against.
It depends on numpy and the standard library only, so tests, benchmarks and the demo can use
it without loading anything else of ``mu``.

Conversion: samples of ``bitdepth`` bits are scaled to 0..1 by ``v / (2**bitdepth - 1)``
(16-bit input is never truncated to 8 bits first). Luma is BT.709,
``Y' = 0.2126 R' + 0.7152 G' + 0.0722 B'``, and the colour differences are
``Cb = (B' - Y') / 1.8556`` and ``Cr = (R' - Y') / 1.5748``. Studio range maps ``Y'`` to
16..235 and ``Cb``/``Cr`` to 16..240 around 128. Chroma is computed from the box average of
R'G'B' over 2x2 (4:2:0) or 2x1 (4:2:2) pixels; odd sizes replicate the last column/row.
:func:`rgb_to_ycbcr_float` takes R'G'B' already normalised to 0..1; :func:`convert_planes`
takes integer samples and their bit depth. All math is float64; :func:`convert_frame` rounds
half up (``floor(v + 0.5)``) and clips to 0..255, which is what ``png2y4m --no-dither`` does.

Y4M layout: one header line ``YUV4MPEG2 W<w> H<h> F<n>:<d> Ip A<a>:<b> C<chroma>`` and per
frame ``FRAME`` (optionally followed by parameters) and a newline, then the Y, Cb and Cr
planes, each row-major, one byte per sample.
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
    "Planes",
    "Video",
    "Y4MError",
    "chroma_size",
    "convert_frame",
    "convert_planes",
    "psnr",
    "read_y4m",
    "rgb_to_ycbcr_float",
    "write_y4m",
]

KR = 0.2126
KB = 0.0722
KG = 1.0 - KR - KB

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]
Planes = tuple[U8, U8, U8]

_TAGS = {"420": "C420jpeg", "422": "C422jpeg", "444": "C444"}
_SUBSAMPLING = {"420": (2, 2), "422": (2, 1), "444": (1, 1)}


class Y4MError(ValueError):
    """A Y4M stream is malformed or a frame does not fit its header."""


@dataclass
class Video:
    """A decoded Y4M stream.

    ``chroma`` is ``"420"``, ``"422"`` or ``"444"``; ``fps`` and ``aspect`` are the
    ``(numerator, denominator)`` of the header (``aspect`` ``(0, 0)`` means unknown).
    """

    width: int
    height: int
    fps: tuple[int, int] = (24, 1)
    aspect: tuple[int, int] = (0, 0)
    chroma: str = "420"
    frames: list[Planes] = field(default_factory=list)


def _subsampling(chroma: str) -> tuple[int, int]:
    if chroma not in _SUBSAMPLING:
        raise Y4MError(f"chroma {chroma!r} is not one of 420, 422, 444")
    return _SUBSAMPLING[chroma]


def chroma_size(width: int, height: int, chroma: str) -> tuple[int, int]:
    """Width and height of a chroma plane: ``ceil(w/2)``, and ``ceil(h/2)`` for 4:2:0."""
    sx, sy = _subsampling(chroma)
    return -(-width // sx), -(-height // sy)


def _chroma_from_tag(tag: str) -> str:
    if tag.startswith("420"):
        return "420"
    if tag.startswith("422"):
        return "422"
    if tag.startswith("444") and not tag.startswith("444alpha"):
        return "444"
    raise Y4MError(f"unsupported Y4M colour space C{tag}")


def _ratio(text: str, what: str) -> tuple[int, int]:
    num, sep, den = text.partition(":")
    if not sep or not num.isdigit() or not den.isdigit():
        raise Y4MError(f"bad {what} {text!r} in Y4M header")
    return int(num), int(den)


def read_y4m(path: str | os.PathLike[str]) -> Video:
    """Read a whole Y4M file.

    Raises:
        Y4MError: missing or malformed header, unsupported colour space, a truncated frame.
    """
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"\n")
    if end < 0 or not data.startswith(b"YUV4MPEG2 "):
        raise Y4MError(f"{os.fspath(path)}: not a Y4M stream")
    video = Video(0, 0)
    for token in data[10:end].decode("ascii", "replace").split():
        key, value = token[0], token[1:]
        if key == "W":
            video.width = int(value)
        elif key == "H":
            video.height = int(value)
        elif key == "F":
            video.fps = _ratio(value, "frame rate")
        elif key == "A":
            video.aspect = _ratio(value, "aspect")
        elif key == "C":
            video.chroma = _chroma_from_tag(value)
    if video.width < 1 or video.height < 1:
        raise Y4MError(f"{os.fspath(path)}: header lacks a positive W and H")
    cw, ch = chroma_size(video.width, video.height, video.chroma)
    luma, chroma = video.width * video.height, cw * ch
    pos = end + 1
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0 or not data.startswith(b"FRAME", pos):
            raise Y4MError(f"{os.fspath(path)}: bad frame header at byte {pos}")
        start = nl + 1
        stop = start + luma + 2 * chroma
        if stop > len(data):
            raise Y4MError(f"{os.fspath(path)}: truncated frame at byte {pos}")
        raw = np.frombuffer(data, np.uint8, luma + 2 * chroma, start)
        y = raw[:luma].reshape(video.height, video.width).copy()
        cb = raw[luma : luma + chroma].reshape(ch, cw).copy()
        cr = raw[luma + chroma :].reshape(ch, cw).copy()
        video.frames.append((y, cb, cr))
        pos = stop
    return video


def write_y4m(path: str | os.PathLike[str], video: Video) -> None:
    """Write ``video`` as a Y4M file (header, then every frame).

    Raises:
        Y4MError: a plane's shape does not match the header.
    """
    cw, ch = chroma_size(video.width, video.height, video.chroma)
    header = (
        f"YUV4MPEG2 W{video.width} H{video.height} F{video.fps[0]}:{video.fps[1]} Ip "
        f"A{video.aspect[0]}:{video.aspect[1]} {_TAGS[video.chroma]}\n"
    )
    shapes = [(video.height, video.width), (ch, cw), (ch, cw)]
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        for index, planes in enumerate(video.frames):
            for plane, shape in zip(planes, shapes, strict=True):
                if plane.shape != shape:
                    raise Y4MError(f"frame {index}: plane shape {plane.shape} is not {shape}")
            f.write(b"FRAME\n")
            for plane in planes:
                f.write(np.ascontiguousarray(plane, dtype=np.uint8).tobytes())


def _box(plane: F64, sx: int, sy: int) -> F64:
    """Box average over ``sx`` x ``sy`` blocks, replicating the last column/row."""
    h, w = plane.shape
    if sx == 2 and w % 2:
        plane = np.concatenate([plane, plane[:, -1:]], axis=1)
    if sy == 2 and h % 2:
        plane = np.concatenate([plane, plane[-1:, :]], axis=0)
    if sx == 2:
        plane = plane[:, 0::2] + plane[:, 1::2]
    if sy == 2:
        plane = plane[0::2, :] + plane[1::2, :]
    out: F64 = plane / float(sx * sy)
    return out


def _check_rgb(arr: npt.NDArray[np.generic]) -> None:
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise Y4MError(f"expected an (h, w, 3) R'G'B' array, got shape {arr.shape}")


def rgb_to_ycbcr_float(rgb: npt.NDArray[np.floating], chroma: str = "420") -> tuple[F64, F64, F64]:
    """Unrounded Y, Cb, Cr (float64, in 8-bit code values) of normalised R'G'B'.

    Args:
        rgb: an ``(h, w, 3)`` array of R'G'B' in 0..1 (full scale is 1.0).
        chroma: ``"420"``, ``"422"`` or ``"444"``; the chroma planes are
            :func:`chroma_size` of the frame.

    Returns:
        ``(Y, Cb, Cr)``: Y is ``(h, w)``, studio range 16..235 for 0..1 input; Cb and Cr are
        16..240 around 128, computed from the box average of R'G'B'.

    Raises:
        Y4MError: bad shape or chroma.
    """
    f = np.asarray(rgb, np.float64)
    _check_rgb(f)
    sx, sy = _subsampling(chroma)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16.0 + 219.0 * (KR * r + KG * g + KB * b)
    rs, gs, bs = _box(r, sx, sy), _box(g, sx, sy), _box(b, sx, sy)
    ys = KR * rs + KG * gs + KB * bs
    cb = 128.0 + 112.0 * (bs - ys) / (1.0 - KB)
    cr = 128.0 + 112.0 * (rs - ys) / (1.0 - KR)
    return y, cb, cr


def convert_planes(
    rgb: npt.NDArray[np.generic],
    bitdepth: int,
    chroma: str = "420",
) -> tuple[F64, F64, F64]:
    """Unrounded Y, Cb, Cr (float64, in 8-bit code values) of an ``(h, w, 3)`` R'G'B' frame
    of integer samples of ``bitdepth`` bits: :func:`rgb_to_ycbcr_float` of ``v / (2**bitdepth
    - 1)``.

    Raises:
        Y4MError: bad shape, bit depth or chroma.
    """
    arr = np.asarray(rgb)
    _check_rgb(arr)
    if not 1 <= bitdepth <= 16:
        raise Y4MError(f"bit depth {bitdepth} is not 1..16")
    _subsampling(chroma)
    return rgb_to_ycbcr_float(arr.astype(np.float64) / float((1 << bitdepth) - 1), chroma)


def _quantise(plane: F64) -> U8:
    out: U8 = np.clip(np.floor(plane + 0.5), 0, 255).astype(np.uint8)
    return out


def convert_frame(
    rgb: npt.NDArray[np.generic],
    bitdepth: int,
    chroma: str = "420",
) -> Planes:
    """Y, Cb, Cr (uint8, studio range) of an ``(h, w, 3)`` R'G'B' frame, rounded to nearest.

    Raises:
        Y4MError: bad shape, bit depth or chroma.
    """
    y, cb, cr = convert_planes(rgb, bitdepth, chroma)
    return _quantise(y), _quantise(cb), _quantise(cr)


def psnr(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of ``a`` against ``b`` (``inf`` when equal).

    Raises:
        Y4MError: shapes differ.
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise Y4MError(f"shapes differ: {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)
