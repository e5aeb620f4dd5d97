"""``mu denoise``'s job: the denoise states with their inputs, outputs, function and relay.

Theory of operation
-------------------
:class:`DenoiseJob` is the :class:`mu.runopts.Job` that :func:`mu.runopts.run` drives, built
from :class:`DenoiseOptions`. Its S3 layout and states are :mod:`mu.apps.denoise`'s. It asks
for the relay (``needs_relay``): the run path starts one beside the coordinator and tells
every worker where it is.

``--input-dir`` uploads ``DIR/*.y4m`` (sorted) as chunks 0, 1, ... of the video (what
``mu png2y4m --output-dir`` downloads). The preflight lists the input chunks around the
actors and fixes the plan in the job's config: every actor's chunk must be there, and so
must each neighbour whose halo it needs; the highest actor's chunk ends the video unless
the chunk after it is in S3; the chunks that run are the actors (``--resume`` leaves the finished ones
out, and their neighbours read their halos from S3). ``--resume`` finds the chunks whose
output is already complete (:mod:`mu.integrity`); ``--output-dir`` downloads the outputs.
On a site that deploys its jobs (the local one) it lambdaizes png2y4m with ``denoise``
beside it (``--binary``, ``--denoiser``), as ``mu lambdaize ... --also`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from mu.apps.denoise import DEFAULT_HALO_TIMEOUT, ConfigState, DenoiseConfig
from mu.apps.png2y4m import (
    bucket_exists,
    download_outputs,
    finished_chunks,
    keys_under,
    upload_numbered,
)
from mu.apps.png2y4m_run import deploy_programs
from mu.launch import Launcher
from mu.options import DEFAULT_BINARY, Png2Y4MOptions

__all__ = ["DEFAULT_DENOISER", "DenoiseJob", "DenoiseOptions", "upload_chunks"]

DEFAULT_DENOISER = DEFAULT_BINARY.parents[1] / "denoise" / "denoise"
"""The denoise binary built by ``make -C function/denoise`` in a source checkout."""


@dataclass(frozen=True)
class DenoiseOptions(Png2Y4MOptions):
    """``mu denoise``: ``mu png2y4m``'s flags and defaults, the filter's radius, the halo
    timeout, and the binaries (png2y4m, with denoise beside it)."""

    function: str = "denoise"
    informat: str = "y4m"
    radius: int = 2
    halo_timeout: float = DEFAULT_HALO_TIMEOUT
    denoiser: str = str(DEFAULT_DENOISER)


def upload_chunks(s3: Any, cfg: DenoiseConfig, directory: str, create_bucket: bool) -> int:
    """Upload ``directory/*.y4m`` (sorted) as input chunks 0, 1, ... of ``cfg``.

    Returns:
        The number of chunks uploaded.

    Raises:
        ConfigError: no Y4M in ``directory``, or the bucket is missing and may not be made.
    """
    return upload_numbered(s3, cfg.bucket, directory, "y4m", cfg.chunk_input_key, 0,
                           create_bucket)


class DenoiseJob:
    """The denoise job (:class:`mu.runopts.Job`), whose workers meet at the relay.

    Raises:
        ConfigError: a bad video, bucket, frame count, radius (above the frames per chunk)
            or halo timeout.
    """

    first_state = ConfigState
    needs_relay = True

    def __init__(self, options: DenoiseOptions) -> None:
        self.options = options
        self.config = DenoiseConfig(
            video=options.video, bucket=options.bucket, frames=options.frames,
            radius=options.radius, halo_timeout=options.halo_timeout,
        )
        self.function = options.function
        self.bucket = options.bucket
        self.workers = options.workers
        self.offset = options.offset

    def deploy(self, launcher: Launcher, regions: Sequence[str], role: str) -> None:
        """Lambdaize png2y4m with denoise beside it into a private temp dir; create the
        function."""
        deploy_programs(launcher, regions, role, self.function, {
            "png2y4m": (self.options.binary, "--binary", "function/png2y4m"),
            "denoise": (self.options.denoiser, "--denoiser", "function/denoise"),
        })

    def upload_inputs(self, s3: Any, create_bucket: bool, out: TextIO) -> None:
        if self.options.input_dir:
            count = upload_chunks(s3, self.config, self.options.input_dir, create_bucket)
            print(f"uploaded {count} chunks to s3://{self.bucket}/{self.config.input_prefix}",
                  file=out)

    def preflight(self, s3: Any, actors: list[int]) -> list[str]:
        """Check the input chunks around ``actors`` and fix the plan (the video's last
        chunk, the chunks that run) in :attr:`config`."""
        cfg = self.config
        if not actors:
            return []
        if not bucket_exists(s3, cfg.bucket):
            return [f"bucket {cfg.bucket!r} does not exist or is not reachable"]
        lo, hi = max(0, min(actors) - 1), max(actors) + 1
        present_keys = keys_under(s3, cfg.bucket, cfg.input_prefix, cfg.chunk_input_key(lo),
                                  cfg.chunk_input_key(hi))
        present = {c for c in range(lo, hi + 1) if cfg.chunk_input_key(c) in present_keys}
        missing = [a for a in actors if a not in present]
        problems = []
        if missing:
            shown = ", ".join(cfg.chunk_input_key(a) for a in missing[:3])
            problems.append(
                f"{len(missing)} of the {len(actors)} input chunks are missing from "
                f"s3://{cfg.bucket}/{cfg.input_prefix} (make them with `mu png2y4m -f "
                f"{cfg.frames}`): {shown}{' ...' if len(missing) > 3 else ''}")
        running = frozenset(actors)
        if cfg.radius > 0:
            for a in actors:
                gaps = [n for n in (a - 1, a + 1)
                        if 0 <= n < hi and n not in running and n not in present]
                for n in gaps:
                    problems.append(
                        f"chunk {n}, a neighbour of chunk {a} whose halo it needs, is missing "
                        f"from s3://{cfg.bucket}/{cfg.chunk_input_key(n)}")
        last = None if hi in present else max(actors)
        self.config = dataclasses.replace(cfg, last_chunk=last, running=running)
        return problems

    def finished(self, s3: Any, actors: list[int]) -> list[int]:
        return finished_chunks(s3, self.config, actors)

    @property
    def frames_per_worker(self) -> int:
        """Frames each worker filters (:class:`mu.cost.JobCost`)."""
        return self.options.frames

    def s3_requests(self, actors: int) -> tuple[dict[str, int], dict[str, int]]:
        """S3 requests per worker (a GET for its chunk, a PUT for its output; the recovery
        path's GETs of neighbours are not counted) and the coordinator's (the preflight's
        listing, 1,000 keys a page)."""
        return {"GET": 1, "PUT": 1}, {"LIST": max(1, -(-(actors + 2) // 1000))}

    def download_outputs(self, s3: Any, actors: list[int], out: TextIO) -> list[str]:
        if not self.options.output_dir:
            return []
        outputs = download_outputs(s3, self.config, actors, self.options.output_dir)
        print(f"downloaded {len(outputs)} of {len(actors)} chunks to "
              f"{self.options.output_dir}/", file=out)
        return outputs
