"""The runtime-only bundle (``mu run`` on the local backend) and the one handler file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from mu.lambdaize import build_runtime_bundle, handler_source

ROOT = Path(__file__).resolve().parents[2]


def test_the_two_handler_paths_are_one_file() -> None:
    packaged = ROOT / "mu" / "worker" / "lambda_function.py"
    checkout = ROOT / "function" / "lambda_function.py"
    assert os.path.samefile(packaged, checkout)
    assert handler_source() == checkout.read_bytes()


def test_the_runtime_bundle_holds_the_handler_and_runtime_only(tmp_path: Path) -> None:
    bundle = build_runtime_bundle()
    assert bundle == build_runtime_bundle()  # reproducible
    zf = zipfile.ZipFile(io.BytesIO(bundle.zip_bytes))
    names = set(zf.namelist())
    assert "lambda_function.py" in names and "mu/worker/session.py" in names
    assert "mu_command.json" not in names  # no command: each run: carries its own
    assert all(n == "lambda_function.py" or n.startswith("mu/") for n in names)
    info = zf.getinfo("lambda_function.py")
    assert (info.external_attr >> 16) & 0o170000 == 0o100000  # a regular file, not a link
    assert zf.read("lambda_function.py") == (ROOT / "function" / "lambda_function.py").read_bytes()
    # It imports alone, as Lambda imports it.
    zf.extractall(tmp_path)
    done = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, '.'); import lambda_function; "
         "print(lambda_function.__name__)"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "lambda_function", done.stderr


def test_the_worker_imports_what_its_docstring_names() -> None:
    code = (
        "import sys, mu.worker.session\n"
        "print(' '.join(sorted(m for m in sys.modules if m == 'mu' or m.startswith('mu.'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    core = {m for m in done.stdout.split() if not m.startswith("mu.worker")}
    assert core == {"mu", "mu.errors", "mu.integrity", "mu.protocol"}
    import mu.worker

    for name in sorted(core - {"mu"} | {"mu.faults"}):
        assert f"``{name}``" in (mu.worker.__doc__ or ""), name
