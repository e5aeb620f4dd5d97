"""A job of the user's own: their first state class, a bucket, and files in and out.

Theory of operation
-------------------
:class:`StateJob` is the :class:`mu.runopts.Job` behind ``mu run MODULE:StartState`` and
:func:`mu.run_job`. It needs no glue from the user: the states say what each worker does;
the bucket goes into every worker's payload; on a site that deploys its jobs (the local
one) the function is the runtime-only bundle (:func:`mu.lambdaize.deploy_runtime`), since
such a job's ``run:`` commands carry their own command lines. Files:

- ``input_dir``: every file under it is uploaded before the run, its path below the
  directory being its key (``inputs/in/00000000.txt`` -> ``in/00000000.txt``);
- ``output_dir``: after the run, every object under ``output_prefix`` that was not an input
  of this run is downloaded there, under its key.

The job's configuration handed to every state (``self.config``) is the
:class:`~mu.options.JobOptions`. :func:`load_state` turns ``MODULE:StartState`` into the
class, with one clear line for each way that can fail.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from mu.errors import ConfigError
from mu.launch import Launcher
from mu.options import JobOptions
from mu.states import MachineState

__all__ = ["StateJob", "load_state"]


def load_state(spec: str) -> Callable[..., MachineState]:
    """The state class named by ``MODULE:StartState`` (the current directory importable).

    Raises:
        ConfigError: not ``MODULE:NAME``, no such module, no such name, or not a state class.
    """
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name:
        raise ConfigError(f"{spec!r} is not MODULE:StartState (e.g. myjob:Convert)")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")  # as `python -m` does: the user's module beside them
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"no module named {module_name!r} (looked in {Path.cwd()} "
                              "and on the Python path)") from exc
        raise ConfigError(f"module {module_name!r} cannot be imported: {exc}") from exc
    except Exception as exc:  # the user's module raised while importing: say so, in one line
        raise ConfigError(
            f"module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    found = getattr(module, name, None)
    if found is None:
        raise ConfigError(f"module {module_name!r} has no {name!r}")
    if not (isinstance(found, type) and issubclass(found, MachineState)):
        raise ConfigError(f"{spec} is not a state class (a subclass of mu.states.MachineState)")
    return found


class StateJob:
    """A job made of the user's states (:class:`mu.runopts.Job`).

    Args:
        first_state: the state class that receives each worker's hello.
        options: workers, bucket, function, input and output directories.
        output_prefix: which keys ``output_dir`` receives (default: every key).
    """

    def __init__(
        self, first_state: Callable[..., MachineState], options: JobOptions,
        output_prefix: str = "",
    ) -> None:
        if not options.bucket:
            raise ConfigError("no bucket: pass -b/--bucket (the workers' S3 bucket)")
        self.first_state = first_state
        self.options = options
        self.config = options
        self.function = options.function
        self.bucket = options.bucket
        self.workers = options.workers
        self.offset = options.offset
        self.output_prefix = output_prefix
        self._inputs: set[str] = set()

    def deploy(self, launcher: Launcher, regions: Sequence[str], role: str) -> None:
        from mu.lambdaize import deploy_runtime

        deploy_runtime(launcher, self.function, regions, role)

    def upload_inputs(self, s3: Any, create_bucket: bool, out: TextIO) -> None:
        if not self.options.input_dir:
            return
        from mu.apps.png2y4m import bucket_exists, create, s3_where
        from mu.aws import aws_errors

        root = Path(self.options.input_dir)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        if not files:
            raise ConfigError(f"no files in input directory {str(root)!r}")
        if not bucket_exists(s3, self.bucket):
            if not create_bucket:
                raise ConfigError(f"bucket {self.bucket!r} does not exist")
            create(s3, self.bucket)
        for path in files:
            key = path.relative_to(root).as_posix()
            with aws_errors(s3_where(s3, f"upload {path} to s3://{self.bucket}/{key}")):
                s3.upload_file(str(path), self.bucket, key)
            self._inputs.add(key)
        print(f"uploaded {len(files)} files to s3://{self.bucket}/", file=out)

    def preflight(self, s3: Any, actors: list[int]) -> list[str]:
        from mu.apps.png2y4m import bucket_exists

        if bucket_exists(s3, self.bucket):
            return []
        return [f"bucket {self.bucket!r} does not exist"]

    def finished(self, s3: Any, actors: list[int]) -> list[int]:
        return []  # the job's outputs are the states' business: nothing is known complete

    def download_outputs(self, s3: Any, actors: list[int], out: TextIO) -> list[str]:
        if not self.options.output_dir:
            return []
        from mu.apps.png2y4m import s3_where
        from mu.aws import aws_errors

        target = Path(self.options.output_dir)
        written: list[str] = []
        with aws_errors(s3_where(s3, f"list s3://{self.bucket}/{self.output_prefix}")):
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.output_prefix)
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        for key in keys:
            path = target / key
            if key in self._inputs or key.endswith("/") or not path.resolve().is_relative_to(
                    target.resolve()):
                continue  # an input, a folder marker, or a key that would land outside
            path.parent.mkdir(parents=True, exist_ok=True)
            with aws_errors(s3_where(s3, f"download s3://{self.bucket}/{key}")):
                s3.download_file(self.bucket, key, str(path))
            written.append(str(path))
        print(f"downloaded {len(written)} objects to {target}/", file=out)
        return written
