"""The 2016 key flags as the seed README types them: ``-c ca_cert.pem -s server_cert.pem
-k server_key.pem`` and no worker flags.

The workers get the pair ``mu genkeys`` wrote beside the server certificate; else one minted
for the run from ``ca_key.pem`` beside the CA certificate; else the run stops before
anything starts, naming ``--worker-cert/--worker-key`` and ``mu genkeys``. The coordinator's
key never serves as the workers'.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mu.errors import ConfigError
from mu.frames import write_frames
from mu.options import RunOptions
from mu.runopts import load_keys
from mu.tls import KeySet

SEED = ("ca_cert.pem", "server_cert.pem", "server_key.pem")


def seed_dir(key_dir: Path, into: Path, *extra: str) -> Path:
    """A directory holding the three seed files plus ``extra`` ones from ``mu genkeys``."""
    into.mkdir()
    for name in (*SEED, *extra):
        shutil.copy(key_dir / name, into / name)
    return into


def seed_flags(where: Path) -> list[str]:
    return ["-c", str(where / SEED[0]), "-s", str(where / SEED[1]), "-k", str(where / SEED[2])]


def parsed(where: Path) -> RunOptions:
    from mu.cli import parse_png2y4m

    return parse_png2y4m(seed_flags(where))[1]


def public(pem: str) -> bytes:
    return serialization.load_pem_private_key(pem.encode(), None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_worker_pair_beside_the_server_certificate_is_used(
    key_dir: Path, keys: KeySet, tmp_path: Path
) -> None:
    where = seed_dir(key_dir, tmp_path / "k", "worker_cert.pem", "worker_key.pem", "ca_key.pem")
    got = load_keys(parsed(where), environ={})
    assert got is not None
    assert (got.worker_cert, got.worker_key) == (keys.worker_cert, keys.worker_key)
    assert got.server_key == keys.server_key != got.worker_key


def test_a_worker_certificate_is_minted_from_the_ca_key(
    key_dir: Path, keys: KeySet, tmp_path: Path
) -> None:
    where = seed_dir(key_dir, tmp_path / "k", "ca_key.pem")
    got = load_keys(parsed(where), environ={})
    assert got is not None
    assert got.worker_cert not in (keys.worker_cert, keys.server_cert)
    assert public(got.worker_key) not in (public(keys.server_key), public(keys.worker_key))
    minted = x509.load_pem_x509_certificate(got.worker_cert.encode())
    minted.verify_directly_issued_by(x509.load_pem_x509_certificate(keys.ca_cert.encode()))
    usage = minted.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert minted.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == public(got.worker_key)


def test_a_ca_key_of_another_ca_is_refused(key_dir: Path, tmp_path: Path) -> None:
    from mu.tls import generate_keys

    where = seed_dir(key_dir, tmp_path / "k")
    (where / "ca_key.pem").write_text(generate_keys(days=1).ca_key)
    with pytest.raises(ConfigError, match="CA key does not belong to the CA certificate"):
        load_keys(parsed(where), environ={})


def test_half_a_worker_pair_is_refused(key_dir: Path, tmp_path: Path) -> None:
    args = parsed(key_dir)
    half = dataclasses.replace(args, keys=dataclasses.replace(
        args.keys, worker_cert=str(key_dir / "worker_cert.pem")))
    with pytest.raises(ConfigError, match="give both --worker-cert and --worker-key"):
        load_keys(half, environ={})


# ------------------------------------------------------------ as the user types it


@pytest.fixture(scope="module")
def frame_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("frames")
    write_frames(out, 2, 32, 32, depth=8)
    return out


def mu_png2y4m(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "mu.cli", "png2y4m", "--backend", "local", "-t", "0", *argv],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300, check=False,
    )


@pytest.mark.parametrize("beside", [("worker_cert.pem", "worker_key.pem"), ("ca_key.pem",)],
                         ids=["genkeys-pair", "minted"])
def test_seed_readme_command_runs(
    key_dir: Path, frame_dir: Path, png2y4m_binary: Path, tmp_path: Path,
    beside: tuple[str, ...],
) -> None:
    where = seed_dir(key_dir, tmp_path / "keys", *beside)
    done = mu_png2y4m(
        ["-n", "2", "-f", "1", "-l", "png2y4m", "-b", "seed-keys", "--input-dir",
         str(frame_dir), "--binary", str(png2y4m_binary), *seed_flags(where)],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "mu: 2 done, 0 error" in done.stderr


def test_without_a_worker_pair_or_ca_key_nothing_starts(
    key_dir: Path, frame_dir: Path, png2y4m_binary: Path, tmp_path: Path
) -> None:
    where = seed_dir(key_dir, tmp_path / "keys")
    done = mu_png2y4m(
        ["-n", "2", "-f", "1", "-b", "seed-keys-none", "--input-dir", str(frame_dir),
         "--binary", str(png2y4m_binary), *seed_flags(where)],
        tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "nothing was launched" in done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if "no worker certificate" in ln]
    assert "--worker-cert/--worker-key" in line and "`mu genkeys`" in line
    assert str(where / "ca_key.pem") in line and str(where / "worker_cert.pem") in line
    assert "done," not in done.stderr  # no run report: no coordinator ran
