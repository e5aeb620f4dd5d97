"""A job that deploys its own function (the local backend) names each program it cannot find,
with how to build it and the flag that points at another, before anything is deployed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mu.apps.denoise_run import DenoiseJob, DenoiseOptions
from mu.apps.encode_run import EncodeJob, EncodeOptions
from mu.apps.png2y4m_run import Png2Y4MJob
from mu.errors import ConfigError
from mu.options import Png2Y4MOptions


class NoLauncher:
    """Fails the test if a deploy gets as far as creating a function."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the launcher was used ({name}) with a program missing")


@pytest.mark.parametrize(
    ("job", "missing"),
    [(lambda p, m: Png2Y4MJob(Png2Y4MOptions(binary=m)),
      "png2y4m binary {m!r} not found (build it with `make -C function/png2y4m`, or pass "
      "--binary)"),
     (lambda p, m: EncodeJob(EncodeOptions(binary=p, encoder=m)),
      "vpxenc binary {m!r} not found (build it with `make -C function/vpxenc`, or pass "
      "--encoder)"),
     (lambda p, m: DenoiseJob(DenoiseOptions(binary=p, denoiser=m)),
      "denoise binary {m!r} not found (build it with `make -C function/denoise`, or pass "
      "--denoiser)")],
    ids=["png2y4m", "encode", "denoise"],
)
def test_a_missing_program_is_named_before_deploying(job: Any, missing: str,
                                                     tmp_path: Path) -> None:
    present = tmp_path / "png2y4m"
    present.write_bytes(b"\x7fELF")
    absent = str(tmp_path / "nowhere" / "prog")
    with pytest.raises(ConfigError) as refused:
        job(str(present), absent).deploy(NoLauncher(), ["us-east-1"], "role")
    assert str(refused.value) == missing.format(m=absent)
