"""``mu png2y4m``'s job: the png2y4m states with their inputs, outputs and function.

Theory of operation
-------------------
:class:`Png2Y4MJob` is the :class:`mu.runopts.Job` that :func:`mu.runopts.run` drives, built
from the typed :class:`~mu.options.Png2Y4MOptions`. It knows the job's S3 layout
(:mod:`mu.apps.png2y4m`): ``--input-dir`` uploads local PNGs as frames 1, 2, ... of the
input prefix; preflight checks that every frame the actors need is there; ``--resume``
finds the chunks whose output is already complete (size and SHA-256 as recorded at upload,
:mod:`mu.integrity`); ``--output-dir`` downloads every chunk that was produced. On a site
that deploys its jobs (the local one) it lambdaizes ``--binary`` (unchanged bundles are
recognised by their CodeSha256). Everything else (preflight, the coordinator, the report)
is the run path's, the same for every job.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mu.apps.png2y4m import (
    COMMAND,
    ConfigState,
    Png2Y4MConfig,
    download_outputs,
    finished_chunks,
    preflight_inputs,
    upload_inputs,
)
from mu.errors import ConfigError
from mu.launch import Launcher
from mu.options import DEFAULT_BINARY, Png2Y4MOptions

__all__ = ["DEFAULT_BINARY", "Png2Y4MJob", "deploy_programs", "worker_command"]


def worker_command(binary: str) -> str:
    """The command a worker started by hand from a checkout runs (backend none)."""
    import shlex

    return f"{shlex.quote(str(Path(binary).resolve()))} {COMMAND}"


def deploy_programs(launcher: Launcher, regions: Sequence[str], role: str, function: str,
                    programs: dict[str, tuple[str, str, str]]) -> None:
    """Lambdaize the first of ``programs`` (the worker's command runs it with ``COMMAND``)
    with the others beside it, into a private temp dir, and create ``function``.

    Args:
        programs: name -> (path, the flag that names it, the source dir that builds it).

    Raises:
        ConfigError: a program is not a file (named, with how to build it or the flag).
    """
    from mu.lambdaize import LambdaizeOptions, lambdaize

    for name, (path, flag, source) in programs.items():
        if not Path(path).is_file():
            raise ConfigError(f"{name} binary {str(path)!r} not found (build it with "
                              f"`make -C {source}`, or pass {flag})")
    executable, *also = (path for path, _, _ in programs.values())
    with tempfile.TemporaryDirectory(prefix="mu-bundle-") as tmp:
        lambdaize(
            LambdaizeOptions(executable=executable, post_args=COMMAND, also=tuple(also),
                             name=function, role=role, regions=tuple(regions), out_dir=tmp),
            launcher,
        )


class Png2Y4MJob:
    """The png2y4m job (:class:`mu.runopts.Job`).

    Args:
        options: the job's options.

    Raises:
        ConfigError: a bad video, bucket, input format or frame count.
    """

    first_state = ConfigState

    def __init__(self, options: Png2Y4MOptions) -> None:
        self.options = options
        self.config = Png2Y4MConfig(
            video=options.video, bucket=options.bucket, informat=options.informat,
            frames=options.frames,
        )
        self.function = options.function
        self.bucket = options.bucket
        self.workers = options.workers
        self.offset = options.offset

    def deploy(self, launcher: Launcher, regions: Sequence[str], role: str) -> None:
        """Lambdaize ``--binary`` into a private temp dir and create the function."""
        deploy_programs(launcher, regions, role, self.function,
                        {"png2y4m": (self.options.binary, "--binary", "function/png2y4m")})

    def upload_inputs(self, s3: Any, create_bucket: bool, out: TextIO) -> None:
        if self.options.input_dir:
            count = upload_inputs(s3, self.config, self.options.input_dir, create_bucket)
            print(f"uploaded {count} frames to s3://{self.bucket}/{self.config.input_prefix}",
                  file=out)

    def preflight(self, s3: Any, actors: list[int]) -> list[str]:
        return preflight_inputs(s3, self.config, actors)

    def finished(self, s3: Any, actors: list[int]) -> list[int]:
        return finished_chunks(s3, self.config, actors)

    @property
    def frames_per_worker(self) -> int:
        """Frames each worker converts (:class:`mu.cost.JobCost`)."""
        return self.options.frames

    def s3_requests(self, actors: int) -> tuple[dict[str, int], dict[str, int]]:
        """S3 requests per worker (a GET per frame, a PUT for its chunk) and the
        coordinator's (the preflight's listing of the input frames, 1,000 keys a page)."""
        frames = self.options.frames
        return {"GET": frames, "PUT": 1}, {"LIST": max(1, -(-actors * frames // 1000))}

    def download_outputs(self, s3: Any, actors: list[int], out: TextIO) -> list[str]:
        if not self.options.output_dir:
            return []
        outputs = download_outputs(s3, self.config, actors, self.options.output_dir)
        print(f"downloaded {len(outputs)} of {len(actors)} chunks to "
              f"{self.options.output_dir}/", file=out)
        return outputs
