"""Where the running emulators are, so that ``logs`` finds one started with ``--state-dir``.

Theory of operation
-------------------
While ``serve`` runs, it keeps one small JSON file, ``<pid>.json``, in :data:`REGISTRY`
(``~/.cache/mu/emulators``, beside the default state dir; ``XDG_CACHE_HOME`` moves both):
its process id, state dir and endpoints. It removes the file when it stops. A file whose
process is gone (an emulator killed with SIGKILL) is ignored, and removed by the next
emulator that registers. :func:`running` lists the live ones, newest first.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from emulator.server import DEFAULT_STATE_DIR

__all__ = ["REGISTRY", "Running", "register", "running", "unregister"]

REGISTRY = DEFAULT_STATE_DIR.parent / "emulators"
"""One ``<pid>.json`` per running emulator."""


@dataclass(frozen=True)
class Running:
    """A running emulator, as it recorded itself."""

    pid: int
    state_dir: Path
    lambda_url: str
    s3_url: str
    started: float


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def register(
    state_dir: Path, lambda_url: str, s3_url: str, registry: Path = REGISTRY
) -> Path | None:
    """Record this process as a running emulator; returns the file to pass to
    :func:`unregister` (None if the registry cannot be written: serving goes on, only
    ``logs`` will not find it). Records of emulators that are gone are removed."""
    try:
        return _register(state_dir, lambda_url, s3_url, registry)
    except OSError:
        return None


def _register(state_dir: Path, lambda_url: str, s3_url: str, registry: Path) -> Path:
    registry.mkdir(parents=True, exist_ok=True)
    for stale in registry.glob("*.json"):
        if stale.stem.isdigit() and not _alive(int(stale.stem)):
            stale.unlink(missing_ok=True)
    record = {"pid": os.getpid(), "state_dir": str(Path(state_dir).resolve()),
              "lambda": lambda_url, "s3": s3_url}
    path = registry / f"{os.getpid()}.json"
    fd, tmp = tempfile.mkstemp(dir=registry, prefix=".new-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)  # whole or not at all, for a concurrent reader
    return path


def unregister(path: Path | None) -> None:
    """Remove this emulator's record (stopping)."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def running(registry: Path = REGISTRY) -> list[Running]:
    """The emulators that are running now, newest first."""
    found = []
    for path in registry.glob("*.json"):
        if not path.stem.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(path.read_text())
            pid = int(record["pid"])
            if _alive(pid):
                found.append(Running(pid, Path(record["state_dir"]), str(record["lambda"]),
                                     str(record["s3"]), path.stat().st_mtime))
    return sorted(found, key=lambda r: -r.started)
