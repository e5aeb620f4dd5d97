"""Turn an executable into a Lambda function: check it, bundle it, deploy it.

Theory of operation
-------------------
``mu lambdaize EXECUTABLE [PRE_ARGS [POST_ARGS [EXTRA_FILE ...]]]`` keeps the interface of
the 2016 ``lambdaize.sh``: the worker's command is ``PRE_ARGS ./EXECUTABLE POST_ARGS`` and the
settings come from ``MEM_SIZE``, ``TIMEOUT``, ``AWS_ROLE``, ``SKIP_UPLOAD``, ``ALLOW_LD`` and
``REGION`` (flags override them). One function may carry several programs: each ``--also
PROGRAM`` is checked like EXECUTABLE (and must need the same architecture) and shipped beside
it, for ``run:`` commands that name it (``run:./vpxenc ...``; ``mu encode`` runs png2y4m and
vpxenc in one invocation so). Three steps:

1. **Check** (:func:`inspect_executable`). The file must exist and be executable. An ELF file
   is parsed with pyelftools: its machine picks the Lambda architecture (x86_64 or arm64),
   and a ``PT_INTERP`` segment means it is dynamically linked. Lambda's runtime image has
   its own C library but not much else, so a dynamic binary is refused ("build it
   statically") unless ``allow_dynamic`` is set; then every ``DT_NEEDED`` library except the
   C library and its loader is resolved (``ldd``, else the ``ld.so`` search path) and shipped
   in ``solibs/``, and the command is prefixed with ``LD_LIBRARY_PATH=./solibs``. A script is
   accepted only if its ``#!`` interpreter exists on Lambda's runtime.
2. **Bundle** (:func:`build_bundle`). The zip holds the handler ``lambda_function.py``, the
   worker runtime (``mu/__init__.py``, the pure-core modules, ``mu/worker/**.py``),
   ``mu_command.json``, the executable (exec bit kept), the shared libraries and the extra
   files. It is reproducible: fixed timestamps, sorted entries, fixed permissions, so the
   same inputs give the same bytes and an unchanged bundle is recognised by its CodeSha256.
   Lambda's limits are checked as early as they can be: the files' sizes against 250 MB
   unzipped before any is read, the zip against 50 MB before it is written or deployed
   (unless it goes through an S3 bucket).
3. **Deploy** (:func:`lambdaize`) through a :class:`~mu.launch.Launcher` passed in by the
   caller (this module never imports a backend), once per region.

A job whose ``run:`` commands carry their own command line needs no executable:
:func:`build_runtime_bundle` zips the handler and the runtime alone, and
:func:`deploy_runtime` deploys it (``mu run`` on the local backend does).

Where the handler comes from: the runtime files are read with :mod:`importlib.resources`
from the installed ``mu`` package. The handler is looked up first as
``mu/worker/lambda_function.py`` (package data, works from an installed package), then as
``function/lambda_function.py`` next to the package in a source checkout.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import string
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from mu.errors import ConfigError
from mu.launch import DEFAULT_MEMORY, DEFAULT_RUNTIME, DEFAULT_TIMEOUT, FunctionSpec, Launcher
from mu.options import DEFAULT_REGION, split_regions

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "DEFAULT_MEMORY",
    "DEFAULT_RUNTIME",
    "DEFAULT_TIMEOUT",
    "MAX_UNZIPPED",
    "MAX_ZIPPED",
    "Bundle",
    "ExecutableInfo",
    "LambdaizeOptions",
    "LambdaizeResult",
    "build_bundle",
    "build_runtime_bundle",
    "deploy_runtime",
    "env_defaults",
    "find_executable",
    "function_name",
    "handler_source",
    "inspect_executable",
    "lambdaize",
    "resolve_libraries",
    "runtime_files",
]

LOCAL_ROLE = "arn:aws:iam::000000000000:role/mu-local"
"""Role of functions on the local site when none is set (the emulator checks none)."""

# The pure core that the worker runtime imports (STYLE §1, L0), shipped with mu/worker/.
CORE_MODULES = (
    "errors", "protocol", "launch", "states", "actor", "config", "faults", "integrity",
)

# ELF e_machine -> Lambda architecture.
MACHINES = {"EM_X86_64": "x86_64", "EM_AARCH64": "arm64"}

# Libraries Lambda's runtime always has: never bundled (a second libc breaks the loader).
SYSTEM_LIBRARIES = (
    "libc.so",
    "ld-linux",
    "ld64.so",
    "libm.so",
    "libpthread.so",
    "libdl.so",
    "librt.so",
)

# Interpreters a script may name in its #! line, and what /usr/bin/env may run.
SHEBANG_INTERPRETERS = ("/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash")
ENV_PROGRAMS = ("sh", "bash", "python3", "python")

# Fixed zip metadata (the zip format's epoch) for reproducible bundles.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
MODE_EXEC = 0o755
MODE_FILE = 0o644

STATIC_ADVICE = "build it statically (e.g. make STATIC=1)"

MB = 1024 * 1024
MAX_UNZIPPED = 250 * MB
"""Lambda's limit on a function's code unzipped, in bytes (250 MB)."""
MAX_ZIPPED = 50 * MB
"""Lambda's limit on a zip sent in the create/update request, in bytes (50 MB); a bigger one
must go through an S3 bucket (still at most :data:`MAX_UNZIPPED` unzipped)."""


# --------------------------------------------------------------------------------------------
# Checking the executable


@dataclass(frozen=True)
class ExecutableInfo:
    """What :func:`inspect_executable` found out.

    Attributes:
        path: the file.
        kind: ``"elf"`` or ``"script"``.
        architecture: the Lambda architecture (``"x86_64"`` or ``"arm64"``).
        interpreter: the ELF ``PT_INTERP`` path or the script's ``#!`` line.
        needed: the ELF ``DT_NEEDED`` entries (empty for static binaries and scripts).
        runpath: ``DT_RUNPATH``/``DT_RPATH`` directories, ``$ORIGIN`` expanded.
    """

    path: Path
    kind: str
    architecture: str
    interpreter: str = ""
    needed: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()

    @property
    def dynamic(self) -> bool:
        """Whether the binary needs the dynamic loader."""
        return self.kind == "elf" and bool(self.interpreter)


def find_executable(path: str) -> tuple[str, bool]:
    """Where ``path`` is: as given (relative to the current directory), else, for a relative
    path that is not there, the same path in mu's source checkout (so the README's
    ``mu lambdaize function/png2y4m/png2y4m ...`` works from any directory).

    Returns:
        ``(path to use, True if it was found in the checkout rather than as given)``.
    """
    given = Path(path)
    if given.exists() or given.is_absolute():
        return path, False
    checkout = Path(str(resources.files("mu"))).parent / given
    if checkout.is_file():
        return str(checkout), True
    return path, False


def inspect_executable(path: str | os.PathLike[str], allow_dynamic: bool = False) -> ExecutableInfo:
    """Check that ``path`` can run on Lambda.

    Args:
        path: the executable.
        allow_dynamic: accept a dynamically linked ELF (its libraries will be bundled).

    Returns:
        what was found (architecture, interpreter, needed libraries).

    Raises:
        ConfigError: missing, not a file, not executable, neither ELF nor an acceptable
            script, an ELF for a machine Lambda lacks, or dynamically linked without
            ``allow_dynamic``.
    """
    p = Path(path)
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative to {os.getcwd()})"
        raise ConfigError(f"executable {str(p)!r} does not exist{where}")
    if not p.is_file():
        raise ConfigError(f"executable {str(p)!r} is not a regular file")
    if not os.access(p, os.X_OK):
        raise ConfigError(f"{str(p)!r} is not executable (chmod +x it)")
    with p.open("rb") as f:
        magic = f.read(4)
    if magic == b"\x7fELF":
        return _inspect_elf(p, allow_dynamic)
    if magic[:2] == b"#!":
        return _inspect_script(p)
    raise ConfigError(
        f"{str(p)!r} is neither an ELF executable nor a script starting with #! "
        f"(it starts with {magic!r})"
    )


def _inspect_script(p: Path) -> ExecutableInfo:
    with p.open("rb") as f:
        line = f.readline(256).decode("utf-8", "replace").strip()
    words = line[2:].split()
    if not words:
        raise ConfigError(f"script {str(p)!r} has an empty #! line")
    interpreter = words[0]
    if interpreter in SHEBANG_INTERPRETERS:
        return ExecutableInfo(p, "script", "x86_64", interpreter=line)
    if interpreter == "/usr/bin/env" and len(words) >= 2 and words[1] in ENV_PROGRAMS:
        return ExecutableInfo(p, "script", "x86_64", interpreter=line)
    allowed = ", ".join([*SHEBANG_INTERPRETERS, *(f"/usr/bin/env {e}" for e in ENV_PROGRAMS)])
    raise ConfigError(
        f"script {str(p)!r} runs {line!r}, which Lambda's runtime does not provide "
        f"(use one of: {allowed})"
    )


def _string_tags(segment: DynamicSegment) -> list[tuple[str, str]]:
    """(tag, value) of the DT_NEEDED / DT_RUNPATH / DT_RPATH entries, in file order."""
    out: list[tuple[str, str]] = []
    for tag in segment.iter_tags():
        kind = str(tag.entry.d_tag)
        if kind in ("DT_NEEDED", "DT_RUNPATH", "DT_RPATH"):
            # pyelftools names the decoded string after the tag: .needed, .runpath, .rpath
            out.append((kind, str(getattr(tag, kind[3:].lower()))))
    return out


def _inspect_elf(p: Path, allow_dynamic: bool) -> ExecutableInfo:
    try:
        with p.open("rb") as f:
            elf = ELFFile(f)
            machine = str(elf["e_machine"])
            e_type = str(elf["e_type"])
            interpreter = ""
            needed: list[str] = []
            runpath: list[str] = []
            for segment in elf.iter_segments():
                if isinstance(segment, InterpSegment):
                    interpreter = str(segment.get_interp_name())
                elif isinstance(segment, DynamicSegment):
                    for kind, value in _string_tags(segment):
                        if kind == "DT_NEEDED":
                            needed.append(value)
                        else:
                            runpath.extend(value.split(":"))
    except (ELFError, ValueError, OSError) as exc:
        raise ConfigError(f"{str(p)!r} is not a valid ELF file: {exc}") from exc
    if e_type not in ("ET_EXEC", "ET_DYN"):
        raise ConfigError(f"{str(p)!r} is an ELF {e_type}, not an executable")
    if machine not in MACHINES:
        raise ConfigError(
            f"{str(p)!r} is built for {machine}; Lambda runs EM_X86_64 (x86_64) or "
            "EM_AARCH64 (arm64)"
        )
    if interpreter and not allow_dynamic:
        raise ConfigError(
            f"{str(p)!r} is dynamically linked (interpreter {interpreter}, needs "
            f"{', '.join(needed) or 'no libraries'}); Lambda may not have its libraries: "
            f"{STATIC_ADVICE}, or pass --allow-dynamic (ALLOW_LD=1) to bundle them"
        )
    if not interpreter and needed:
        raise ConfigError(
            f"{str(p)!r} needs {', '.join(needed)} but has no interpreter: a shared library, "
            "not an executable"
        )
    origin = str(p.resolve().parent)
    dirs = tuple(d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in runpath if d)
    return ExecutableInfo(p, "elf", MACHINES[machine], interpreter, tuple(needed), dirs)


def _is_system_library(soname: str) -> bool:
    return soname.startswith(SYSTEM_LIBRARIES) or soname.startswith("linux-vdso")


def resolve_libraries(info: ExecutableInfo) -> dict[str, Path]:
    """Find every shared library a dynamic executable needs, minus the C library and loader.

    ``ldd`` is asked first (it follows the real loader's rules and lists the transitive
    closure); if it is missing or fails, the ``DT_NEEDED`` entries are looked up recursively
    in ``DT_RUNPATH``, ``LD_LIBRARY_PATH``, the ``ldconfig`` cache and the default
    directories.

    Args:
        info: a dynamic executable, as returned by :func:`inspect_executable`.

    Returns:
        soname -> file to ship as ``solibs/<soname>`` (symlinks resolved later).

    Raises:
        ConfigError: a needed library cannot be found.
    """
    if not info.needed:
        return {}
    found = _ldd(info.path)
    if found is None:
        found = _search_needed(info)
    missing = sorted(name for name, where in found.items() if where is None)
    if missing:
        raise ConfigError(
            f"{str(info.path)!r} needs {', '.join(missing)}, which cannot be found on this "
            f"machine; install it or {STATIC_ADVICE}"
        )
    return {
        name: where
        for name, where in sorted(found.items())
        if where is not None and not _is_system_library(name)
    }


def _ldd(path: Path) -> dict[str, Path | None] | None:
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        result = subprocess.run(
            [ldd, str(path)], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    found: dict[str, Path | None] = {}
    for line in result.stdout.splitlines():
        name, arrow, rest = line.strip().partition(" => ")
        if not arrow:
            continue
        target = rest.split(" (", 1)[0].strip()
        found[name] = None if target == "not found" or not target else Path(target)
    return found


def _default_dirs(architecture: str) -> list[str]:
    triplet = "x86_64-linux-gnu" if architecture == "x86_64" else "aarch64-linux-gnu"
    dirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib64", "/usr/lib64", "/lib", "/usr/lib"]
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run(
            [ldconfig, "-p"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    cached = [line.rsplit(" => ", 1)[1].strip() for line in out.splitlines() if " => " in line]
    return [str(Path(c).parent) for c in cached] + dirs


def _search_needed(info: ExecutableInfo) -> dict[str, Path | None]:
    env_dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs = list(dict.fromkeys([*info.runpath, *env_dirs, *_default_dirs(info.architecture)]))
    found: dict[str, Path | None] = {}
    todo = list(info.needed)
    while todo:
        name = todo.pop()
        if name in found or _is_system_library(name):
            continue
        where = next((Path(d) / name for d in dirs if (Path(d) / name).is_file()), None)
        found[name] = where
        if where is not None:
            try:
                lib = inspect_executable_library(where)
            except ConfigError:
                continue
            todo.extend(lib)
    return found


def inspect_executable_library(path: Path) -> tuple[str, ...]:
    """The ``DT_NEEDED`` entries of a shared library (for the recursive search)."""
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            out: list[str] = []
            for segment in elf.iter_segments():
                if isinstance(segment, DynamicSegment):
                    out.extend(v for k, v in _string_tags(segment) if k == "DT_NEEDED")
            return tuple(out)
    except (ELFError, ValueError, OSError) as exc:
        raise ConfigError(f"{str(path)!r} is not a valid ELF library: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Bundling


def handler_source() -> bytes:
    """The bytes of the Lambda handler that goes to the zip root as ``lambda_function.py``.

    Returns:
        ``mu/worker/lambda_function.py`` from the installed package if present, else
        ``function/lambda_function.py`` beside the package in a source checkout.

    Raises:
        ConfigError: neither exists.
    """
    packaged = resources.files("mu").joinpath("worker").joinpath("lambda_function.py")
    if packaged.is_file():
        return packaged.read_bytes()
    checkout = Path(str(resources.files("mu"))).parent / "function" / "lambda_function.py"
    if checkout.is_file():
        return checkout.read_bytes()
    raise ConfigError(
        "the Lambda handler lambda_function.py was not found (looked in mu/worker/ and "
        f"{checkout.parent})"
    )


def _walk_py(node: Traversable, prefix: str) -> Iterable[tuple[str, bytes]]:
    for child in node.iterdir():
        if child.is_dir():
            if child.name != "__pycache__":
                yield from _walk_py(child, f"{prefix}{child.name}/")
        elif child.name.endswith(".py"):
            yield f"{prefix}{child.name}", child.read_bytes()


def runtime_files() -> dict[str, bytes]:
    """The worker runtime shipped in every bundle: arcname -> bytes.

    ``mu/__init__.py``, the pure-core modules that exist, and ``mu/worker/**/*.py``.
    """
    root = resources.files("mu")
    files: dict[str, bytes] = {"mu/__init__.py": root.joinpath("__init__.py").read_bytes()}
    for module in CORE_MODULES:
        node = root.joinpath(f"{module}.py")
        if node.is_file():
            files[f"mu/{module}.py"] = node.read_bytes()
    worker = root.joinpath("worker")
    if worker.is_dir():
        files.update(_walk_py(worker, "mu/worker/"))
    return files


@dataclass(frozen=True)
class Bundle:
    """A built zip.

    Attributes:
        zip_bytes: the zip itself.
        command: the worker's command (also in ``mu_command.json``).
        architecture: the Lambda architecture the executable needs.
        entries: the arcnames, sorted.
    """

    zip_bytes: bytes
    command: str
    architecture: str
    entries: tuple[str, ...]

    @property
    def code_sha256(self) -> str:
        """Base64 SHA-256 of the zip, as Lambda reports it (``CodeSha256``)."""
        return base64.b64encode(hashlib.sha256(self.zip_bytes).digest()).decode()


def _zip(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for arcname in sorted(files):
            data, mode = files[arcname]
            info = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
            info.create_system = 3  # Unix, so external_attr carries the permissions
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=9)
    return out.getvalue()


def build_bundle(
    executable: str | os.PathLike[str],
    pre_args: str = "",
    post_args: str = "",
    extra_files: Sequence[str | os.PathLike[str]] = (),
    allow_dynamic: bool = False,
    max_unzipped: int = MAX_UNZIPPED,
    also: Sequence[str | os.PathLike[str]] = (),
) -> Bundle:
    """Build the reproducible zip for ``executable``.

    Args:
        executable: the program the workers run.
        pre_args: words before ``./EXECUTABLE`` in the command.
        post_args: words after it (templates such as ``##INFILE##`` stay as they are).
        extra_files: more files for the zip root (their exec bit is kept).
        allow_dynamic: bundle the shared libraries of a dynamic executable.
        max_unzipped: refuse, before reading any file, a bundle whose files add up to more
            bytes than this (Lambda's limit).
        also: more programs beside ``executable`` in the zip root, each checked as it is;
            ``run:`` commands call them as ``./NAME``.

    Returns:
        the bundle.

    Raises:
        ConfigError: the executable or one of ``also`` is refused (see
            :func:`inspect_executable`) or needs another architecture, an extra file is
            missing, two files would have the same name in the zip, or the files add up to
            more than ``max_unzipped``.
    """
    info = inspect_executable(executable, allow_dynamic)
    others = [inspect_executable(path, allow_dynamic) for path in also]
    for other in others:
        if other.architecture != info.architecture:
            raise ConfigError(
                f"{str(other.path)!r} is built for {other.architecture} but "
                f"{str(info.path)!r} for {info.architecture}: one function runs on one "
                "architecture"
            )
    exe_name = info.path.name
    files: dict[str, tuple[bytes, int]] = {"lambda_function.py": (handler_source(), MODE_FILE)}
    for arcname, data in runtime_files().items():
        files[arcname] = (data, MODE_FILE)
    planned: dict[str, Path] = {}  # arcname -> file, read once the total size is known

    def add(arcname: str, path: Path, what: str) -> None:
        if arcname in files or arcname in planned:
            raise ConfigError(f"{what} {str(path)!r} would overwrite {arcname} in the bundle")
        planned[arcname] = path

    add(exe_name, info.path, "executable")
    for other in others:
        add(other.path.name, other.path, "executable")
    command = " ".join(w for w in (pre_args.strip(), f"./{exe_name}", post_args.strip()) if w)
    libraries: dict[str, Path] = {}
    for program in (info, *others):
        if program.dynamic:
            libraries.update(resolve_libraries(program))
    for soname, where in sorted(libraries.items()):
        add(f"solibs/{soname}", where.resolve(), "library")
    if info.dynamic:
        command = f"LD_LIBRARY_PATH=./solibs {command}"
    files["mu_command.json"] = (json.dumps({"command": command}).encode(), MODE_FILE)
    for extra in extra_files:
        path = Path(extra)
        if not path.is_file():
            raise ConfigError(f"extra file {str(path)!r} does not exist or is not a file")
        add(path.name, path, "extra file")
    sizes = {arcname: path.stat().st_size for arcname, path in planned.items()}
    unzipped = sum(len(data) for data, _ in files.values()) + sum(sizes.values())
    if unzipped > max_unzipped:
        largest = max(sizes, key=sizes.__getitem__)
        raise ConfigError(
            f"the bundle would be {unzipped / MB:.1f} MB ({unzipped} bytes) unzipped, above "
            f"Lambda's {max_unzipped / MB:g} MB ({max_unzipped} bytes) limit for a function's "
            f"code (largest file: {largest}, {sizes[largest] / MB:.1f} MB); keep big data in S3 and "
            f"fetch it with retrieve: instead"
        )
    for arcname, path in planned.items():
        mode = MODE_EXEC if os.access(path, os.X_OK) else MODE_FILE
        files[arcname] = (path.read_bytes(), mode)
    return Bundle(_zip(files), command, info.architecture, tuple(sorted(files)))


def build_runtime_bundle() -> Bundle:
    """The reproducible zip of the worker runtime alone: no executable, no command.

    For a job whose states give every ``run:`` its own command line (``run:wc -l < ...``),
    so the function needs nothing but the handler and the runtime.
    """
    files = {"lambda_function.py": (handler_source(), MODE_FILE)}
    files.update((arcname, (data, MODE_FILE)) for arcname, data in runtime_files().items())
    return Bundle(_zip(files), "", "x86_64", tuple(sorted(files)))


def deploy_runtime(
    launcher: Launcher, name: str, regions: Sequence[str], role: str
) -> dict[str, dict[str, Any]]:
    """Create (or update) the runtime-only function ``name`` in each region.

    Args:
        launcher: the backend.
        name: the function name.
        regions: where.
        role: the execution role.

    Returns:
        region -> the create-function response.

    Raises:
        LaunchError: the backend refused the function.
    """
    bundle = build_runtime_bundle()
    spec = FunctionSpec(
        name=name, zip_bytes=bundle.zip_bytes, role=role,
        architecture=bundle.architecture, description="mu worker runtime",
    )
    return {region: launcher.create_function(spec, region) for region in regions}


def function_name(executable: str | os.PathLike[str], name: str | None = None) -> str:
    """``name``, or the executable's basename + ``_`` + 8 random letters/digits.

    Raises:
        ConfigError: the name is not a valid Lambda function name.
    """
    if not name:
        alphabet = string.ascii_letters + string.digits
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(executable).name)[:55]
        name = f"{stem}_{''.join(secrets.choice(alphabet) for _ in range(8))}"
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ConfigError(
            f"function name {name!r} must be 1-64 letters, digits, hyphens or underscores"
        )
    return name


# --------------------------------------------------------------------------------------------
# Options and deployment


def _env_int(environ: Mapping[str, str], key: str) -> int | None:
    raw = environ.get(key, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{key}={raw!r} is not an integer") from exc


def _env_flag(environ: Mapping[str, str], key: str) -> bool:
    return environ.get(key, "").strip().lower() not in ("", "0", "no", "false", "off")


def env_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from the 2016 environment variables (flags override them).

    ``MEM_SIZE`` (MB), ``TIMEOUT`` (s), ``AWS_ROLE``, ``SKIP_UPLOAD``, ``ALLOW_LD`` (any value
    but empty/0/no/false/off is true) and ``REGION`` (comma list).

    Returns:
        keys ``memory``, ``timeout``, ``role``, ``skip_upload``, ``allow_dynamic``,
        ``regions`` (only those set).

    Raises:
        ConfigError: ``MEM_SIZE`` or ``TIMEOUT`` is not an integer.
    """
    out: dict[str, Any] = {}
    memory = _env_int(environ, "MEM_SIZE")
    if memory is not None:
        out["memory"] = memory
    timeout = _env_int(environ, "TIMEOUT")
    if timeout is not None:
        out["timeout"] = timeout
    if environ.get("AWS_ROLE", "").strip():
        out["role"] = environ["AWS_ROLE"].strip()
    if _env_flag(environ, "SKIP_UPLOAD"):
        out["skip_upload"] = True
    if _env_flag(environ, "ALLOW_LD"):
        out["allow_dynamic"] = True
    regions = environ.get("REGION", "")
    if regions.replace(",", "").strip():
        out["regions"] = split_regions(regions, "REGION")
    return out


@dataclass(frozen=True)
class LambdaizeOptions:
    """Everything ``mu lambdaize`` needs (see :func:`lambdaize`)."""

    executable: str
    pre_args: str = ""
    post_args: str = ""
    extra_files: tuple[str, ...] = ()
    name: str | None = None
    memory: int = DEFAULT_MEMORY
    timeout: int = DEFAULT_TIMEOUT
    role: str = ""
    regions: tuple[str, ...] = (DEFAULT_REGION,)
    runtime: str = DEFAULT_RUNTIME
    skip_upload: bool = False
    allow_dynamic: bool = False
    out_dir: str = "."
    environment: Mapping[str, str] = field(default_factory=dict)
    max_zipped: int | None = MAX_ZIPPED
    """Refuse to deploy a bigger zip (None: it goes through an S3 bucket, no such limit)."""
    max_unzipped: int = MAX_UNZIPPED
    also: tuple[str, ...] = ()
    """More programs shipped beside ``executable`` (``--also``)."""

    def validate(self) -> None:
        """Raises: ConfigError for memory, timeout or regions Lambda would refuse."""
        if not 128 <= self.memory <= 10240:
            raise ConfigError(f"memory {self.memory} MB is outside Lambda's 128-10240 MB")
        if not 1 <= self.timeout <= 900:
            raise ConfigError(f"timeout {self.timeout} s is outside Lambda's 1-900 s")
        if not self.regions:
            raise ConfigError("at least one region is needed")


@dataclass(frozen=True)
class LambdaizeResult:
    """What :func:`lambdaize` did.

    Attributes:
        name: the function name.
        zip_path: where the zip was written.
        bundle: the bundle.
        functions: region -> the create-function response (empty with ``skip_upload``).
    """

    name: str
    zip_path: Path
    bundle: Bundle
    functions: dict[str, dict[str, Any]]


def lambdaize(options: LambdaizeOptions, launcher: Launcher | None) -> LambdaizeResult:
    """Check, bundle, write ``NAME.zip`` and (unless ``skip_upload``) deploy per region.

    Args:
        options: what to build and how to deploy it.
        launcher: the backend to deploy through (``None`` only with ``skip_upload``).

    Returns:
        the name, the zip's path, the bundle and each region's function configuration.

    Raises:
        ConfigError: bad options or executable; no role (``AWS_ROLE``/``--role``, or the site's default);
            the bundle is above Lambda's limits (``max_unzipped``, ``max_zipped``).
        LaunchError: the backend refused the function.
    """
    options.validate()
    name = function_name(options.executable, options.name)
    role = options.role
    if not options.skip_upload:
        if launcher is None:
            raise ConfigError("no backend to deploy to (pass one, or skip the upload)")
        if not role:
            raise ConfigError(
                "no IAM role for the function: set AWS_ROLE or pass --role "
                "arn:aws:iam::ACCOUNT:role/NAME (a Lambda execution role)"
            )
    bundle = build_bundle(
        options.executable,
        options.pre_args,
        options.post_args,
        options.extra_files,
        options.allow_dynamic,
        options.max_unzipped,
        options.also,
    )
    size = len(bundle.zip_bytes)
    if not options.skip_upload and options.max_zipped is not None and size > options.max_zipped:
        raise ConfigError(
            f"{name}.zip is {size / MB:.1f} MB ({size} bytes), above Lambda's "
            f"{options.max_zipped / MB:g} MB ({options.max_zipped} bytes) limit for a zip "
            f"uploaded directly; deploy it through S3 with --code-bucket BUCKET"
        )
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{name}.zip"
    zip_path.write_bytes(bundle.zip_bytes)
    functions: dict[str, dict[str, Any]] = {}
    if not options.skip_upload:
        assert launcher is not None
        spec = FunctionSpec(
            name=name,
            zip_bytes=bundle.zip_bytes,
            runtime=options.runtime,
            role=role,
            memory=options.memory,
            timeout=options.timeout,
            architecture=bundle.architecture,
            environment=dict(options.environment),
            description=" ".join(Path(p).name for p in (options.executable, *options.also)),
        )
        for region in options.regions:
            functions[region] = launcher.create_function(spec, region)
    return LambdaizeResult(name, zip_path, bundle, functions)
