"""tox plugin: find interpreters installed by pyenv even when they are not on PATH.

pyenv's shims answer only for the versions made global, so ``python3.10`` may be installed
but invisible. Before tox looks for interpreters, this adds each
``$(pyenv root)/versions/X.Y.Z/bin`` (newest patch release per X.Y) to the end of PATH.
On a machine without pyenv it does nothing, and tox skips the interpreters that are missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tox.plugin import impl


def _pyenv_bins() -> list[str]:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not root.is_dir():
        return []
    best: dict[tuple[int, int], tuple[int, Path]] = {}
    for entry in root.iterdir():
        m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", entry.name)
        if m and (entry / "bin").is_dir():
            major, minor, patch = map(int, m.groups())
            if (major, minor) not in best or best[(major, minor)][0] < patch:
                best[(major, minor)] = (patch, entry / "bin")
    return [str(path) for _, path in best.values()]


@impl
def tox_add_core_config(core_conf: object, state: object) -> None:  # noqa: ARG001
    extra = [p for p in _pyenv_bins() if p not in os.environ.get("PATH", "").split(os.pathsep)]
    if extra:
        os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *extra])
