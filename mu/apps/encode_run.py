"""``mu encode``'s job: the encode states with their inputs, outputs, function and stitching.

Theory of operation
-------------------
:class:`EncodeJob` is the :class:`mu.runopts.Job` that :func:`mu.runopts.run` drives, built
from :class:`EncodeOptions`. Its S3 layout is :mod:`mu.apps.encode`'s. ``--input-dir``
uploads local PNGs as frames 1, 2, ... (as ``mu png2y4m`` does); preflight checks every
input the actors need (frames, or Y4M chunks with ``-i y4m``); ``--resume`` finds the IVF
chunks already complete (:mod:`mu.integrity`). On a site that deploys its jobs (the local
one) it lambdaizes png2y4m with vpxenc beside it (``--binary``, ``--encoder``).

After the run, :meth:`EncodeJob.download_outputs` stitches: when every chunk of the video
(``-o`` to ``-o + -n - 1``) is in S3, they are read in order, joined by :func:`mu.ivf.stitch`
and the video is uploaded as ``s3://BUCKET/{video}.ivf``; with ``--output-dir`` the chunks and
the video are written there too. Stitching happens on the user's machine: it moves each
chunk once, and a chunk is a few kB to a few MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mu import ivf
from mu.apps.encode import EncodeConfig, first_state
from mu.apps.png2y4m import (
    _status,
    bucket_exists,
    finished_chunks,
    keys_under,
    preflight_inputs,
    s3_where,
    upload_inputs,
)
from mu.apps.png2y4m_run import deploy_programs
from mu.aws import aws_errors
from mu.errors import ConfigError
from mu.launch import Launcher
from mu.options import DEFAULT_BINARY, Png2Y4MOptions

__all__ = ["DEFAULT_ENCODER", "EncodeJob", "EncodeOptions"]

DEFAULT_ENCODER = DEFAULT_BINARY.parents[1] / "vpxenc" / "vpxenc"


@dataclass(frozen=True)
class EncodeOptions(Png2Y4MOptions):
    """``mu encode``: ``mu png2y4m``'s flags and defaults, the encoder's settings, and the
    encoder binary."""

    function: str = "encode"
    codec: str = "vp9"
    realtime: bool = False
    cpu_used: int = 4
    cq_level: int = 32
    target_bitrate: int | None = None
    threads: int = 1
    encoder: str = str(DEFAULT_ENCODER)


class EncodeJob:
    """The encode job (:class:`mu.runopts.Job`).

    Raises:
        ConfigError: a bad video, bucket, input format, frame count or encoder setting.
    """

    def __init__(self, options: EncodeOptions) -> None:
        self.options = options
        self.config = EncodeConfig(
            video=options.video, bucket=options.bucket, informat=options.informat,
            frames=options.frames, codec=options.codec, realtime=options.realtime,
            cpu_used=options.cpu_used, cq_level=options.cq_level,
            target_bitrate=options.target_bitrate, threads=options.threads,
        )
        self.first_state = first_state(self.config)
        self.function = options.function
        self.bucket = options.bucket
        self.workers = options.workers
        self.offset = options.offset

    def deploy(self, launcher: Launcher, regions: Sequence[str], role: str) -> None:
        """Lambdaize png2y4m with vpxenc beside it into a private temp dir; create the
        function."""
        deploy_programs(launcher, regions, role, self.function, {
            "png2y4m": (self.options.binary, "--binary", "function/png2y4m"),
            "vpxenc": (self.options.encoder, "--encoder", "function/vpxenc"),
        })

    def upload_inputs(self, s3: Any, create_bucket: bool, out: TextIO) -> None:
        if not self.options.input_dir:
            return
        if self.config.y4m_input:
            raise ConfigError("--input-dir uploads PNG frames; it does not go with -i y4m")
        count = upload_inputs(s3, self.config, self.options.input_dir, create_bucket)
        print(f"uploaded {count} frames to s3://{self.bucket}/{self.config.input_prefix}",
              file=out)

    def preflight(self, s3: Any, actors: list[int]) -> list[str]:
        cfg = self.config
        if not cfg.y4m_input:
            return preflight_inputs(s3, cfg, actors)
        if not bucket_exists(s3, cfg.bucket):
            return [f"bucket {cfg.bucket!r} does not exist or is not reachable"]
        keys = [cfg.chunk_input_key(a) for a in actors]
        present = keys_under(s3, cfg.bucket, cfg.input_prefix, min(keys), max(keys))
        missing = [k for k in keys if k not in present]
        if not missing:
            return []
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        return [f"{len(missing)} of the {len(keys)} input Y4M chunks are missing from "
                f"s3://{cfg.bucket}/{cfg.input_prefix} (make them with `mu png2y4m -f "
                f"{cfg.frames}`): {shown}"]

    def finished(self, s3: Any, actors: list[int]) -> list[int]:
        return finished_chunks(s3, self.config, actors)

    @property
    def frames_per_worker(self) -> int:
        """Frames each worker encodes (:class:`mu.cost.JobCost`)."""
        return self.options.frames

    def s3_requests(self, actors: int) -> tuple[dict[str, int], dict[str, int]]:
        """S3 requests per worker (a GET per PNG frame, or one for its Y4M chunk; a PUT for
        its IVF chunk) and the coordinator's (the preflight's listing, 1,000 keys a page;
        the stitch reads every chunk and writes the video)."""
        frames = self.options.frames
        gets = 1 if self.config.y4m_input else frames
        listed = actors if self.config.y4m_input else actors * frames
        return ({"GET": gets, "PUT": 1},
                {"LIST": max(1, -(-listed // 1000)), "GET": actors, "PUT": 1})

    def download_outputs(self, s3: Any, actors: list[int], out: TextIO) -> list[str]:
        """Stitch the video's chunks into ``{video}.ivf`` in S3 (and, with ``--output-dir``,
        on disk beside the chunks) when all are there; the local paths written."""
        cfg = self.config
        chunks = list(range(self.offset, self.offset + self.workers))
        found = {c: data for c in chunks if (data := self._get(s3, cfg.output_key(c)))}
        written: list[str] = []
        directory = Path(self.options.output_dir) if self.options.output_dir else None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for chunk, data in found.items():
                target = directory / f"{chunk:08d}.ivf"
                target.write_bytes(data)
                written.append(str(target))
            print(f"downloaded {len(found)} of {len(chunks)} chunks to {directory}/", file=out)
        missing = [c for c in chunks if c not in found]
        if missing:
            print(f"mu: the video was not stitched: {len(missing)} of {len(chunks)} chunks "
                  f"are missing (first: s3://{cfg.bucket}/{cfg.output_key(missing[0])})",
                  file=out)
            return written
        names = [cfg.output_key(c) for c in chunks]
        video = ivf.stitch([ivf.read(found[c], name) for c, name in zip(chunks, names,
                                                                        strict=True)], names)
        data = ivf.write(video)
        with aws_errors(s3_where(s3, f"upload s3://{cfg.bucket}/{cfg.video_key}")):
            s3.put_object(Bucket=cfg.bucket, Key=cfg.video_key, Body=data)
        where = f"s3://{cfg.bucket}/{cfg.video_key}"
        if directory is not None:
            target = directory / cfg.video_key
            target.write_bytes(data)
            written.append(str(target))
            where += f" and {target}"
        h = video.header
        print(f"stitched {len(chunks)} chunks into {where}: {len(video.frames)} frames, "
              f"{h.width}x{h.height}, {len(data)} bytes", file=out)
        return written

    @staticmethod
    def _get_from(s3: Any, bucket: str, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with aws_errors(s3_where(s3, f"download s3://{bucket}/{key}")):
            try:
                body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if _status(exc) not in (403, 404):
                    raise
                return None  # that chunk failed; the run report names it
        return body

    def _get(self, s3: Any, key: str) -> bytes | None:
        return self._get_from(s3, self.bucket, key)
