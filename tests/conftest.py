"""Session fixtures shared by every test folder.

Fixtures that start servers bind 127.0.0.1 and stop them in ``finally``. Module-specific
fixtures live beside their tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from emulator.s3 import S3Server
from mu.launch import Site
from mu.tls import KeySet, generate_keys

ROOT = Path(__file__).resolve().parents[1]

# Hypothesis' per-example deadline is a timing assertion: on a loaded machine (tox -p on two
# cores, CI) it fails correct code. Tests here never assert timings.
settings.register_profile("mu", deadline=None)
settings.load_profile("mu")


@pytest.fixture(scope="session")
def keys() -> KeySet:
    """A CA, coordinator and worker identity made for this test session."""
    return generate_keys(days=2)


@pytest.fixture(scope="session")
def key_dir(keys: KeySet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session keys written as the six PEM files of ``mu genkeys``."""
    out = tmp_path_factory.mktemp("keys")
    keys.write(out)
    return out


@pytest.fixture(scope="session")
def png2y4m_binary() -> Path:
    """The static png2y4m binary, built (incrementally) from function/png2y4m."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "function" / "png2y4m")], check=True)
    binary = ROOT / "function" / "png2y4m" / "png2y4m"
    assert binary.is_file(), f"build did not produce {binary}"
    return binary


@pytest.fixture(scope="session")
def vpxenc_binary() -> Path:
    """The static vpxenc binary, built (incrementally) from function/vpxenc."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "function" / "vpxenc")], check=True)
    binary = ROOT / "function" / "vpxenc" / "vpxenc"
    assert binary.is_file(), f"build did not produce {binary}"
    return binary


@pytest.fixture
def fresh_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run the test from an empty private directory."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """The emulator's embedded S3 (moto) on 127.0.0.1, one per test module."""
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local(png2y4m_binary: Path) -> Iterator[Site]:
    """The local site (its emulator and S3 server) for one test module, closed after it."""
    from backends import get_backend

    site = get_backend("local")
    try:
        yield site
    finally:
        site.close()


@pytest.fixture(scope="module")
def s3(local: Site) -> Any:
    """A boto3 S3 client of the local site's S3 server."""
    import boto3

    from backends.local import LOCAL_CREDENTIALS, LocalLauncher

    assert isinstance(local.launcher, LocalLauncher)
    return boto3.client("s3", endpoint_url=local.launcher.s3_endpoint_url,
                        region_name="us-east-1", **LOCAL_CREDENTIALS)
