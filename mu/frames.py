"""Deterministic test frames of moving, natural-looking content.

Theory of operation
-------------------
A frame is a smooth colour field (low-frequency sinusoids drifting over time), a few soft
discs moving along Lissajous paths, and a fixed film-grain texture, so the content has
gradients, edges and noise like real footage while being reproducible bit for bit from
``(index, size, depth, seed)``. Values are computed in float64 in 0..1 and quantised once to
8 or 16 bits. 16-bit frames are written with pypng, which (unlike Pillow) writes 16-bit RGB
PNGs without truncation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import png

from mu.errors import ConfigError

__all__ = ["make_frame", "parse_size", "write_frames", "write_png"]


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` into ``(width, height)``.

    Raises:
        ConfigError: not two positive integers separated by ``x``.
    """
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise ConfigError(f"size {text!r} is not WIDTHxHEIGHT with positive integers")
    return int(w), int(h)


def make_frame(
    index: int, width: int, height: int, depth: int = 16, seed: int = 7
) -> npt.NDArray[np.uint16] | npt.NDArray[np.uint8]:
    """Frame ``index`` of the sequence, shape ``(height, width, 3)``.

    Args:
        index: frame number (time); consecutive indices move smoothly.
        width, height: size in pixels.
        depth: 8 or 16 bits per sample.
        seed: selects the sequence (texture and motion).

    Raises:
        ConfigError: unsupported depth or size.
    """
    if depth not in (8, 16):
        raise ConfigError(f"bit depth {depth} is not 8 or 16")
    if width < 1 or height < 1:
        raise ConfigError(f"frame size {width}x{height} is not positive")
    rng = np.random.default_rng(seed)
    t = index / 24.0
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width, 1), y / max(height, 1)

    img = np.empty((height, width, 3), np.float64)
    phases = rng.uniform(0, 2 * np.pi, size=(3, 3))
    for c in range(3):
        a, b, p = phases[c]
        img[..., c] = (
            0.45
            + 0.2 * np.sin(2 * np.pi * (1.3 * u + 0.4 * t) + a)
            + 0.15 * np.cos(2 * np.pi * (0.9 * v - 0.3 * t) + b)
            + 0.1 * np.sin(2 * np.pi * (u + v + 0.2 * t) + p)
        )

    for k in range(4):
        fx, fy, px, py = rng.uniform(0.2, 0.9, size=4)
        cx = width * (0.5 + 0.35 * np.sin(2 * np.pi * fx * t + 6 * px))
        cy = height * (0.5 + 0.35 * np.cos(2 * np.pi * fy * t + 6 * py))
        radius = min(width, height) * (0.08 + 0.03 * k)
        dist = np.hypot(x - cx, y - cy)
        alpha = np.clip((radius - dist) / max(radius * 0.15, 1.0), 0.0, 1.0)[..., None]
        colour = rng.uniform(0.05, 0.95, size=3)
        img = img * (1 - alpha) + colour * alpha

    grain = np.random.default_rng(seed + 1).normal(0.0, 0.012, size=(height, width, 1))
    img = np.clip(img + grain, 0.0, 1.0)
    top = (1 << depth) - 1
    out = np.rint(img * top)
    return out.astype(np.uint16 if depth == 16 else np.uint8)


def write_png(path: str | os.PathLike[str], frame: npt.NDArray[np.generic], depth: int) -> None:
    """Write an RGB frame as PNG at ``depth`` bits per sample."""
    height, width, _ = frame.shape
    writer = png.Writer(width, height, greyscale=False, bitdepth=depth, compression=6)
    with open(path, "wb") as f:
        writer.write(f, frame.reshape(height, width * 3))


def write_frames(
    out_dir: str | os.PathLike[str],
    count: int,
    width: int,
    height: int,
    depth: int = 16,
    seed: int = 7,
    start: int = 1,
) -> list[Path]:
    """Write ``count`` frames as ``out_dir/%08d.png`` numbered from ``start``.

    Returns:
        The paths written, in order.

    Raises:
        ConfigError: a bad count, size or depth.
    """
    if count < 1:
        raise ConfigError(f"frame count {count} is not positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = out / f"{start + i:08d}.png"
        write_png(path, make_frame(start + i, width, height, depth, seed), depth)
        paths.append(path)
    return paths
