"""``mu.__all__`` is sorted, complete, and names only the pure core (STYLE rule 14)."""

from __future__ import annotations

import subprocess
import sys
import types

import mu


def ruff_order(name: str) -> tuple[int, str]:
    """SCREAMING_CASE first, then CamelCase, then the rest (ruff's RUF022 order)."""
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted() -> None:
    assert mu.__all__ == sorted(mu.__all__, key=ruff_order)


def test_all_is_complete() -> None:
    public = {
        name
        for name in dir(mu)
        if not name.startswith("_") and not isinstance(getattr(mu, name), types.ModuleType)
        and name != "annotations"
    }
    assert public | {"__version__"} == set(mu.__all__)
    for name in mu.__all__:
        assert hasattr(mu, name), name


def test_importing_mu_loads_no_third_party_module() -> None:
    code = (
        "import sys, mu, mu.protocol, mu.states, mu.actor, mu.launch\n"
        "bad = [m for m in ('OpenSSL', 'cryptography', 'boto3', 'numpy', 'rich') "
        "if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version_matches_metadata() -> None:
    from importlib.metadata import version

    assert mu.__version__ == version("mu")
