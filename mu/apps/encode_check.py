"""Check an encoded video with a decoder we did not write: Debian's ``vpxdec`` (vpx-tools).

:func:`check_video` decodes an IVF file to Y4M with ``vpxdec`` and compares it with the
source: frame count, frame size, and the PSNR of the luma plane of each decoded frame
against the source frame (:func:`mu.y4m.psnr`). The video passes when every frame decoded,
the size is right and the mean luma PSNR is at least the floor stated for the settings.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mu.errors import ConfigError
from mu.y4m import Video, psnr, read_y4m

__all__ = ["MIN_PSNR", "VideoCheck", "check_video", "decode"]

MIN_PSNR = 30.0
"""Mean luma PSNR (dB) a video encoded at the default settings (VP9, --good, --cq-level 32)
must reach against its source; on mu's test frames it is about 40 dB."""


@dataclass(frozen=True)
class VideoCheck:
    """What the decoder made of one video.

    Attributes:
        path: the IVF file.
        frames: frames decoded.
        size: (width, height) decoded.
        psnr: mean luma PSNR against the source, dB.
        worst: the lowest frame's luma PSNR, dB.
        bytes: the file's size.
        problem: why it fails, or None.
    """

    path: str
    frames: int
    size: tuple[int, int]
    psnr: float
    worst: float
    bytes: int
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def decode(path: str | Path, out: str | Path) -> Video:
    """Decode the IVF ``path`` into the Y4M ``out`` with ``vpxdec``; the decoded video.

    Raises:
        ConfigError: ``vpxdec`` is not installed, or it refused the file (its own message).
    """
    vpxdec = shutil.which("vpxdec")
    if vpxdec is None:
        raise ConfigError("vpxdec is not installed (Debian: apt-get install vpx-tools)")
    done = subprocess.run([vpxdec, "-o", str(out), str(path)], capture_output=True,
                          text=True, check=False, timeout=600)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(f"vpxdec could not decode {path}: {said[-1] if said else done.returncode}")
    return read_y4m(out)


def check_video(path: str | Path, source: Video, floor: float = MIN_PSNR) -> VideoCheck:
    """Decode ``path`` with ``vpxdec`` and compare it with ``source`` (see the module)."""
    size = Path(path).stat().st_size
    with tempfile.TemporaryDirectory(prefix="mu-vpxdec-") as tmp:
        decoded = decode(path, Path(tmp) / "decoded.y4m")
    got = (decoded.width, decoded.height)
    want = (source.width, source.height)
    if got != want:
        return VideoCheck(str(path), len(decoded.frames), got, 0.0, 0.0, size,
                          f"decoded size {got[0]}x{got[1]}, source {want[0]}x{want[1]}")
    if len(decoded.frames) != len(source.frames):
        return VideoCheck(str(path), len(decoded.frames), got, 0.0, 0.0, size,
                          f"{len(decoded.frames)} frames decoded, source has "
                          f"{len(source.frames)}")
    values = [psnr(d[0], s[0]) for d, s in zip(decoded.frames, source.frames, strict=True)]
    mean, worst = statistics.fmean(values), min(values)
    problem = None if mean >= floor else f"mean PSNR {mean:.1f} dB below {floor:g} dB"
    return VideoCheck(str(path), len(decoded.frames), got, mean, worst, size, problem)
