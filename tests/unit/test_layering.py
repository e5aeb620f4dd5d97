"""The import layers of STYLE §1, read from the source with ``ast``.

L0 (pure core) imports only the stdlib and lower L0 modules; ``mu.worker`` (shipped in the
Lambda zip) adds boto3 only; ``mu.tls``/``mu.net`` sit on L0; L3 never imports backends;
only ``mu.cli`` imports ``backends``, lazily; ``emulator`` imports nothing of ours; nothing
imports ``tests``, ``bench`` or ``function``.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"mu", "backends", "emulator", "tests", "bench", "function"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# L0 modules and the L0 modules each may import (the order errors <- protocol <- states <-
# actor; launch and config beside them).
L0 = {
    "mu": {"mu.errors", "mu.protocol", "mu.states", "mu.actor", "mu.launch", "mu.config"},
    "mu.errors": set(),
    "mu.protocol": {"mu.errors"},
    "mu.states": {"mu.errors", "mu.protocol"},
    "mu.actor": {"mu.errors", "mu.protocol", "mu.states"},
    "mu.launch": {"mu.errors", "mu.protocol"},
    "mu.config": {"mu.errors", "mu.protocol", "mu.launch", "mu.faults"},
    "mu.faults": {"mu.errors"},
    "mu.integrity": set(),
    "mu.ivf": {"mu.errors"},
    "mu.retry": set(),
    "mu.cost": {"mu.errors", "mu.launch"},
    "mu.scheduler": {"mu.config", "mu.errors", "mu.faults", "mu.retry"},
}
PURE_NUMERIC = {"mu.y4m"}  # reference implementation: stdlib + numpy, nothing of ours


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (absolute)
    lazy: bool  # inside a function body
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[Import]:
    name = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend(Import(name, a.name, lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = name.split(".")
                    if path.name != "__init__.py":
                        pkg = pkg[:-1]
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    base = ".".join([*pkg, base] if base else pkg)
                targets = [base]
                if base in ("mu", "mu.worker", "mu.apps", "backends", "emulator"):
                    # "from mu import states" imports the submodule mu.states.
                    targets = [f"{base}.{a.name}" for a in child.names]
                found.extend(Import(name, t, lazy, child.lineno) for t in targets)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue  # annotations only: no runtime import
            visit(child, inner)

    visit(tree, False)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def all_imports() -> list[Import]:
    out: list[Import] = []
    for package in ("mu", "backends", "emulator"):
        for path in sorted((ROOT / package).rglob("*.py")):
            out.extend(imports_of(path))
    return out


def first_party_module(target: str, known: set[str]) -> str:
    """Map an imported name to a known module ("mu.states.X" -> "mu.states")."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return target


def layer(module: str) -> int:
    if module in L0 or module in PURE_NUMERIC:
        return 0
    if module == "mu.worker" or module.startswith("mu.worker."):
        return 1
    if module in ("mu.tls", "mu.net"):
        return 2
    if module == "mu.cli":
        return 4
    return 3


KNOWN = {
    module_name(p)
    for package in ("mu", "backends", "emulator")
    for p in (ROOT / package).rglob("*.py")
}


def violation(imp: Import) -> str | None:
    top = imp.target.split(".")[0]
    src = imp.module
    where = f"{src} (line {imp.line}) imports {imp.target}"
    if top in ("tests", "bench", "function"):
        return f"{where}: nothing may import {top}"
    if src.startswith("emulator"):
        if top in OURS - {"emulator"}:
            return f"{where}: emulator imports nothing of ours"
        # boto3 writes logs to CloudWatch Logs; awslambdaric runs in environments.
        if top not in STDLIB | {"emulator", "moto", "werkzeug", "boto3", "botocore",
                                "awslambdaric"}:
            return (f"{where}: emulator may use only the stdlib, moto, werkzeug, boto3 and "
                    "awslambdaric")
        return None
    if top == "backends" and not src.startswith("backends"):
        if src != "mu.cli":
            return f"{where}: only mu.cli may import backends"
        if not imp.lazy:
            return f"{where}: mu.cli imports backends lazily, inside the subcommand"
        return None
    if top == "emulator" and not (src.startswith("backends") or src == "mu.cli"):
        return f"{where}: only backends (and mu.cli through them) may import emulator"
    if src.startswith("backends") or top not in ("mu",):
        # Third-party imports of mu modules.
        if src.startswith("backends") or top in STDLIB:
            return None
        if src in L0:
            return f"{where}: the pure core imports only the stdlib"
        if src in PURE_NUMERIC and top != "numpy":
            return f"{where}: {src} may use only the stdlib and numpy"
        if layer(src) == 1 and top not in ("boto3", "botocore"):
            return f"{where}: mu.worker ships in the zip: stdlib and boto3 only"
        return None
    target = first_party_module(imp.target, KNOWN)
    if src == "mu" and target == "mu.cli" and imp.lazy:
        return None  # mu.run_job: the library's entry reaches the composition root when called
    if src in L0:
        if target not in L0[src] and not (src == "mu" and target == "mu"):
            return f"{where}: L0 order is errors <- protocol <- states <- actor (+launch, config)"
        return None
    if src in PURE_NUMERIC:
        return f"{where}: {src} imports nothing of ours"
    src_layer, dst_layer = layer(src), layer(target)
    if dst_layer == 1 and src_layer != 1:
        return f"{where}: mu.worker is the zip's runtime; only it imports itself"
    if src_layer == 1 and dst_layer not in (0, 1):
        return f"{where}: mu.worker imports only L0 modules"
    if dst_layer > src_layer:
        return f"{where}: L{src_layer} may not import L{dst_layer}"
    return None


def test_there_is_something_to_check() -> None:
    modules = {imp.module for imp in all_imports()}
    assert {"mu.protocol", "mu.states", "mu.actor"} <= modules


def test_import_layers() -> None:
    problems = [v for imp in all_imports() if (v := violation(imp))]
    assert problems == []


@pytest.mark.parametrize(
    ("imp", "message"),
    [
        (Import("mu.protocol", "socket", False, 1), None),
        (Import("mu.protocol", "mu.states", False, 1), "L0 order"),
        (Import("mu.states", "OpenSSL", False, 1), "only the stdlib"),
        (Import("mu.worker.session", "OpenSSL.SSL", False, 1), "stdlib and boto3 only"),
        (Import("mu.worker.session", "mu.tls", False, 1), "only L0"),
        (Import("mu.worker.session", "boto3", False, 1), None),
        (Import("mu.coordinator", "backends.local", True, 1), "only mu.cli"),
        (Import("mu.cli", "backends", False, 1), "lazily"),
        (Import("mu.cli", "backends", True, 1), None),
        (Import("emulator.models", "mu.protocol", False, 1), "nothing of ours"),
        (Import("mu.tls", "mu.cli", False, 1), "L2 may not import L4"),
        (Import("mu.coordinator", "tests.helpers", False, 1), "nothing may import tests"),
    ],
)
def test_the_checker_itself(imp: Import, message: str | None) -> None:
    got = violation(imp)
    if message is None:
        assert got is None
    else:
        assert got is not None and message in got
