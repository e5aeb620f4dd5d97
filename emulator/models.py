"""The emulator's state: functions in a state directory, and invocations.

Theory of operation
-------------------
:class:`FunctionRegistry` keeps each function under ``STATE_DIR/functions/NAME/``: its
configuration (``config.json``) and its code, unpacked once per CodeSha256 into ``code-SHA/``.
A registry opened on an existing state directory finds the functions created before (and
skips a damaged one). Every parameter is checked for type and range before anything is
stored (:class:`~emulator.errors.InvalidParameterValue` names the field, the value and the
rule). A zip is unpacked outside the lock into ``STATE_DIR/unpacking/ID/``, within Lambda's
250 MiB unzipped limit (the sizes the zip lists, and the bytes written), hashed and written
beside it, and moved into place only when whole (under the lock only the moves): a refused
zip leaves nothing behind, and an invoke never waits for a zip's hash or write.

Invocations go through :meth:`FunctionRegistry.invoke`. A synchronous one takes a
concurrency slot at once, or is refused with 429 beyond the limit, as on AWS; the caller
runs it (:attr:`InvokeResult.run`) and gets its answer when it ends, without a thread
waiting for it. Asynchronous (Event) ones are accepted at once (202). One that finds a free
concurrency slot takes it, and the server starts it right after sending the 202
(:attr:`InvokeResult.start`); the others wait in a FIFO queue, started as slots free. The
runner reports each end from its loop's thread, and a failed Event is queued again up
to the function's ``MaximumRetryAttempts`` (default 2, as on AWS). Every invocation
has an :class:`Invocation` record (status, attempts, error, log file), kept for the last
``KEEP_INVOCATIONS`` and read with :meth:`FunctionRegistry.invocation`. The execution engine
(:class:`~emulator.runner.Runner`) sits behind the model and can be swapped.
"""

from __future__ import annotations

import base64
import compileall
import dataclasses
import datetime
import functools
import hashlib
import io
import json
import os
import random
import re
import shutil
import threading
import uuid
import zipfile
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from emulator.errors import (
    EmulatorError,
    InvalidParameterValue,
    RequestTooLarge,
    ResourceConflict,
    ResourceNotFound,
    TooManyRequests,
)
from emulator.runner import Code, Result, Runner

__all__ = ["ACCOUNT", "Function", "FunctionRegistry", "Invocation", "InvokeResult"]

ACCOUNT = "123456789012"
SYNC_LIMIT = 6 * 1024 * 1024
ASYNC_LIMIT = 1024 * 1024
# Matched whole (``fullmatch``): ``$`` would let a name end in a newline.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ARN = re.compile(r"arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:([A-Za-z0-9_-]{1,64})(:[^\s:]+)?")
_HANDLER = re.compile(r"\S{1,128}")
_ENV_KEY = re.compile(r"[a-zA-Z][a-zA-Z0-9_]+")
ENV_LIMIT = 4096  # bytes of environment variables (keys and values), as on AWS
ZIPPED_LIMIT = 50 * 1024 * 1024  # a zip uploaded in the request, as on AWS
UNZIPPED_LIMIT = 262_144_000  # the code unpacked (250 MiB), as on AWS
ARCHITECTURES = ("x86_64", "arm64")
KEEP_INVOCATIONS = 10_000  # invocation records kept (oldest forgotten first)
RUNTIMES = {"python3.9", "python3.10", "python3.11", "python3.12", "python3.13"}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def _show(value: Any) -> str:
    """``repr(value)``, cut short: a message names the value, not all of it."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameterValue(f"{key} {_show(value)} is not an integer in {low}-{high}")
    return value


def _environment(value: Any) -> dict[str, str]:
    """The variables of an ``Environment`` parameter, checked as AWS does."""
    if value is None:
        return {}
    variables = value.get("Variables") if isinstance(value, dict) else value
    if variables is None:
        return {}
    if not isinstance(value, dict) or not isinstance(variables, dict):
        raise InvalidParameterValue(
            f"Environment {_show(value)} is not an object with a Variables object")
    size = 0
    for key, text in variables.items():
        if not _ENV_KEY.fullmatch(key):
            raise InvalidParameterValue(
                f"environment variable name {_show(key)} does not match [a-zA-Z][a-zA-Z0-9_]+")
        if not isinstance(text, str):
            raise InvalidParameterValue(
                f"environment variable {key} has the value {_show(text)}, not a string")
        size += len(key.encode()) + len(text.encode(errors="surrogatepass"))
    if size > ENV_LIMIT:
        raise InvalidParameterValue(
            f"environment variables take {size} bytes, above the limit of {ENV_LIMIT}")
    return dict(variables)


def _settings(params: dict[str, Any], creating: bool) -> dict[str, Any]:
    """The configuration fields of a CreateFunction or UpdateFunctionConfiguration request,
    checked: those present, and when ``creating`` the required ones.

    Raises:
        InvalidParameterValue: naming the field, its value and what it must be.
    """
    out: dict[str, Any] = {}
    for key in ("Role", "Runtime", "Handler"):
        if key not in params and not creating:
            continue
        value = params.get(key)
        if value is None or value == "":
            raise InvalidParameterValue(f"{key} is required")
        if not isinstance(value, str):
            raise InvalidParameterValue(f"{key} {_show(value)} is not a string")
        out[key] = value
    if "Runtime" in out and out["Runtime"] not in RUNTIMES:
        raise InvalidParameterValue(f"runtime {_show(out['Runtime'])} is not supported here "
                                    f"(one of {', '.join(sorted(RUNTIMES))})")
    if "Handler" in out and not _HANDLER.fullmatch(out["Handler"]):
        raise InvalidParameterValue(
            f"Handler {_show(out['Handler'])} is not 1-128 characters without spaces")
    if "Description" in params:
        text = params["Description"] if params["Description"] is not None else ""
        if not isinstance(text, str) or len(text) > 256:
            raise InvalidParameterValue(
                f"Description {_show(text)} is not a string of at most 256 characters")
        out["Description"] = text
    for key, low, high in (("MemorySize", 128, 10240), ("Timeout", 1, 900)):
        if key in params:
            out[key] = _integer(key, params[key], low, high)
    if params.get("Architectures") is not None:
        arch = params["Architectures"]
        if not isinstance(arch, list) or len(arch) != 1 or arch[0] not in ARCHITECTURES:
            raise InvalidParameterValue(
                f"Architectures {_show(arch)} is not one of {list(ARCHITECTURES)}")
        out["Architectures"] = list(arch)
    if "Environment" in params:
        out["Environment"] = _environment(params["Environment"])
    if params.get("EphemeralStorage") is not None:
        storage = params["EphemeralStorage"]
        size = storage.get("Size") if isinstance(storage, dict) else None
        out["EphemeralStorage"] = {"Size": _integer("EphemeralStorage.Size", size, 512, 10240)}
    return out


def _zip_of(code: dict[str, Any]) -> bytes:
    """The zip bytes of a ``Code`` (or UpdateFunctionCode) parameter.

    Raises:
        InvalidParameterValue: no ZipFile, not base64, or larger than ``ZIPPED_LIMIT``.
    """
    data = code.get("ZipFile")
    if not data:
        raise InvalidParameterValue("Code.ZipFile is required (S3 code is not supported)")
    if not isinstance(data, str):
        raise InvalidParameterValue(f"ZipFile {_show(data)} is not base64 text")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise InvalidParameterValue(f"Could not unzip uploaded file: {exc}") from exc
    if len(raw) > ZIPPED_LIMIT:
        raise InvalidParameterValue(
            f"Zipped size {len(raw)} bytes is above the limit of {ZIPPED_LIMIT} bytes")
    return raw


class _Unpacked(NamedTuple):
    """A zip unpacked into ``folder``, the zip itself kept beside it, and its SHA-256."""

    folder: Path
    digest: bytes
    size: int

    @property
    def zip(self) -> Path:
        return self.folder.with_suffix(".zip")


def _discard(unpacked: _Unpacked) -> None:
    """Remove what :meth:`FunctionRegistry._unpack` left that was not moved into place."""
    shutil.rmtree(unpacked.folder, ignore_errors=True)
    unpacked.zip.unlink(missing_ok=True)


def _unzip(raw: bytes, folder: Path) -> None:
    """Unpack ``raw`` into the new folder ``folder`` (the caller removes it on failure).

    The sizes the zip's central directory lists are summed before anything is written, and
    the bytes actually written are counted too, so a zip whose headers lie stops at
    ``UNZIPPED_LIMIT`` all the same. Only stored and deflated entries are unpacked.

    Raises:
        InvalidParameterValue: not a zip, an entry outside ``folder``, or too large.
    """
    entry = ""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = zf.infolist()
            declared = sum(info.file_size for info in infos)
            if declared > UNZIPPED_LIMIT:
                raise InvalidParameterValue(
                    f"Unzipped size must be smaller than {UNZIPPED_LIMIT} bytes: "
                    f"the zip lists {declared}")
            folder.mkdir()
            root = folder.resolve()
            written = 0
            for info in infos:
                entry = info.filename
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise InvalidParameterValue(
                        f"zip entry {_show(entry)} uses compression method "
                        f"{info.compress_type}; only stored and deflated are supported")
                target = (root / entry).resolve()
                if not target.is_relative_to(root):
                    raise InvalidParameterValue(f"zip entry {_show(entry)} escapes the folder")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > UNZIPPED_LIMIT:
                            raise InvalidParameterValue(
                                f"Unzipped size must be smaller than {UNZIPPED_LIMIT} bytes: "
                                f"entry {_show(entry)} unpacks past it (the zip lists "
                                f"{declared} in all)")
                        dst.write(chunk)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    target.chmod(mode)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, RuntimeError, ValueError,
            zlib.error) as exc:
        raise InvalidParameterValue(f"Could not unzip uploaded file: {exc}") from exc
    except OSError as exc:
        raise InvalidParameterValue(
            f"Could not unzip uploaded file: entry {_show(entry)}: {exc}") from exc


@dataclass
class Function:
    """One function's configuration (AWS field names) and where its code is."""

    FunctionName: str
    Runtime: str
    Role: str
    Handler: str
    CodeSha256: str
    CodeSize: int
    Description: str = ""
    Timeout: int = 3
    MemorySize: int = 128
    Architectures: list[str] = field(default_factory=lambda: ["x86_64"])
    Environment: dict[str, str] = field(default_factory=dict)
    Version: str = "$LATEST"
    LastModified: str = field(default_factory=_now)
    RevisionId: str = field(default_factory=lambda: str(uuid.uuid4()))
    published: int = 0  # versions published so far (they all run the current code)
    MaximumRetryAttempts: int | None = None  # None: no event-invoke config (AWS default 2)
    MaximumEventAgeInSeconds: int | None = None
    EphemeralStorage: dict[str, int] = field(default_factory=lambda: {"Size": 512})
    code_dir: str = ""

    def arn(self, region: str) -> str:
        return f"arn:aws:lambda:{region}:{ACCOUNT}:function:{self.FunctionName}"

    def configuration(self, region: str) -> dict[str, Any]:
        """The GetFunctionConfiguration shape."""
        conf = {
            k: v for k, v in asdict(self).items()
            if k[0].isupper() and k not in ("Environment", "MaximumRetryAttempts",
                                            "MaximumEventAgeInSeconds")
        }
        conf["FunctionArn"] = self.arn(region)
        conf["Environment"] = {"Variables": dict(self.Environment)}
        conf["State"] = "Active"
        conf["LastUpdateStatus"] = "Successful"
        conf["PackageType"] = "Zip"
        return conf

    def code(self, region: str) -> Code:
        return Code(
            name=self.FunctionName, version=self.Version, arn=self.arn(region),
            code_dir=self.code_dir, handler=self.Handler, memory=self.MemorySize,
            timeout=float(self.Timeout), environment=dict(self.Environment),
            sha=self.CodeSha256, runtime=self.Runtime,
            tmp_mb=int(self.EphemeralStorage.get("Size", 512)),
        )


@dataclass
class Invocation:
    """One invocation as the registry saw it (all attempts of an Event share one record).

    ``status`` goes ``queued`` (Events only) -> ``running`` -> ``succeeded`` or ``failed``;
    an Event whose function is deleted before it runs ends ``dropped``.
    """

    request_id: str
    function: str
    kind: str
    status: str = "queued"
    attempts: int = 0
    error: dict[str, Any] | None = None
    log_path: str = ""


@dataclass
class InvokeResult:
    """What Invoke answers: status, payload bytes and headers."""

    status: int
    payload: bytes = b""
    function_error: str | None = None
    log_tail: bytes | None = None
    request_id: str = ""
    start: Callable[[], None] | None = None
    """For an accepted Event that holds a concurrency slot: starts it. The caller must call
    it exactly once, after the 202 is on its way (the slot stays taken until the end)."""
    run: Callable[[Callable[[InvokeResult], None]], None] | None = None
    """For a synchronous invoke (it holds a concurrency slot): ``run(answer)`` starts it,
    and ``answer(result)`` follows once it ends, from the runner's thread (at once if the
    emulator is stopping). The caller must call it exactly once."""


class FunctionRegistry:
    """Functions, their code and their invocations.

    Args:
        state_dir: where functions and logs are kept.
        runner: the execution engine.
        region: the region in ARNs and the invocation environment.
        concurrency_limit: invocations running at once.
        duplicate_rate: rehearsals only: the probability that an accepted Event is delivered
            twice, as AWS may do; 0 never.
        duplicate_seed: seeds those draws, so the same invocations are duplicated each run.
    """

    def __init__(
        self, state_dir: Path, runner: Runner, region: str = "us-east-1",
        concurrency_limit: int = 1000, duplicate_rate: float = 0.0, duplicate_seed: int = 0,
    ) -> None:
        if concurrency_limit < 1:
            raise ValueError(f"concurrency limit must be >= 1, got {concurrency_limit}")
        if not 0.0 <= duplicate_rate <= 1.0:
            raise ValueError(f"duplicate rate must be in [0, 1], got {duplicate_rate}")
        self.duplicate_rate = duplicate_rate
        self._duplicate_rng = random.Random(duplicate_seed)
        self.duplicated = 0  # Event invocations delivered twice so far
        self.state_dir = state_dir
        self.runner = runner
        self.region = region
        self.concurrency_limit = concurrency_limit
        self._lock = threading.Condition()
        self._functions: dict[str, Function] = {}
        self._codes: dict[str, tuple[str, Code]] = {}  # name -> (RevisionId, its Code)
        self._active = 0
        self._queue: deque[tuple[str, bytes, str, int]] = deque()
        self._closed = False
        self._invocations: OrderedDict[str, Invocation] = OrderedDict()
        (state_dir / "functions").mkdir(parents=True, exist_ok=True)
        for conf in sorted((state_dir / "functions").glob("*/config.json")):
            try:
                fn = Function(**json.loads(conf.read_text()))
                _settings({"Role": fn.Role, "Runtime": fn.Runtime, "Handler": fn.Handler,
                           "MemorySize": fn.MemorySize, "Timeout": fn.Timeout,
                           "Environment": {"Variables": fn.Environment}}, creating=True)
            except (ValueError, TypeError, RecursionError, EmulatorError):
                continue  # a damaged entry: skip it rather than refuse to start
            self._functions[fn.FunctionName] = fn

    # -- functions -----------------------------------------------------------------------

    @staticmethod
    def resolve_name(name: str) -> str:
        """A function name from a name, ``name:qualifier`` or an ARN."""
        match = _ARN.fullmatch(name)
        if match:
            return match.group(1)
        base = name.split(":", 1)[0]
        if not _NAME.fullmatch(base):
            raise InvalidParameterValue(f"invalid function name {_show(name)}")
        return base

    def get(self, name: str) -> Function:
        base = self.resolve_name(name)
        with self._lock:
            fn = self._functions.get(base)
        if fn is None:
            raise ResourceNotFound(
                f"Function not found: arn:aws:lambda:{self.region}:{ACCOUNT}:function:{base}"
            )
        return fn

    def list(self) -> list[Function]:
        with self._lock:
            return sorted(self._functions.values(), key=lambda f: f.FunctionName)

    def update_configuration(self, name: str, params: dict[str, Any]) -> Function:
        fn = self.get(name)
        settings = _settings(params, creating=False)
        with self._lock:
            for key, value in settings.items():
                setattr(fn, key, value)
            fn.LastModified = _now()
            fn.RevisionId = str(uuid.uuid4())
            self._save(fn)
        self.runner.forget(fn.FunctionName)
        return fn

    def create(self, params: dict[str, Any]) -> Function:
        name = params.get("FunctionName")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidParameterValue(f"invalid FunctionName {_show(name)}")
        settings = _settings(params, creating=True)
        code = params.get("Code")
        if not isinstance(code, dict):
            raise InvalidParameterValue(f"Code {_show(code)} is not an object with a ZipFile")
        publish = params.get("Publish", False)
        if not isinstance(publish, bool):
            raise InvalidParameterValue(f"Publish {_show(publish)} is not a boolean")
        with self._lock:
            if name in self._functions:
                raise ResourceConflict(f"Function already exist: {name}")
        zip_bytes = _zip_of(code)
        unpacked = self._unpack(zip_bytes)  # outside the lock: invocations go on meanwhile
        try:
            with self._lock:
                if name in self._functions:
                    raise ResourceConflict(f"Function already exist: {name}")
                fn = Function(FunctionName=name, CodeSha256="", CodeSize=0, **settings)
                self._store_code(fn, unpacked)
                self._functions[name] = fn
                self._save(fn)
        finally:
            _discard(unpacked)  # gone once stored
        self.runner.warm(fn.code(self.region))
        return fn

    def update_code(self, name: str, params: dict[str, Any]) -> Function:
        fn = self.get(name)
        zip_bytes = _zip_of(params)
        unpacked = self._unpack(zip_bytes)
        try:
            with self._lock:
                if self._functions.get(fn.FunctionName) is not fn:
                    raise ResourceNotFound(f"Function not found: {fn.arn(self.region)}")
                self._store_code(fn, unpacked)
                fn.LastModified = _now()
                fn.RevisionId = str(uuid.uuid4())
                self._save(fn)
        finally:
            _discard(unpacked)
        self.runner.forget(fn.FunctionName)
        self.runner.warm(fn.code(self.region))
        return fn

    def delete(self, name: str) -> None:
        fn = self.get(name)
        with self._lock:
            self._functions.pop(fn.FunctionName, None)
            self._codes.pop(fn.FunctionName, None)
        self.runner.forget(
            fn.FunctionName, reason=f"function {fn.FunctionName} was deleted while this "
            "invocation ran")
        shutil.rmtree(self.state_dir / "functions" / fn.FunctionName, ignore_errors=True)

    def publish(self, name: str) -> dict[str, Any]:
        """Publish a version: numbered 1, 2, ...; the configuration it answers carries it."""
        fn = self.get(name)
        with self._lock:
            fn.published += 1
            self._save(fn)
            conf = fn.configuration(self.region)
        conf["Version"] = str(fn.published)
        conf["FunctionArn"] += f":{fn.published}"
        return conf

    def put_event_invoke_config(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        fn = self.get(name)
        retries = params.get("MaximumRetryAttempts", 2)
        age = params.get("MaximumEventAgeInSeconds", 21600)
        retries = _integer("MaximumRetryAttempts", retries, 0, 2)
        age = _integer("MaximumEventAgeInSeconds", age, 60, 21600)
        with self._lock:
            fn.MaximumRetryAttempts, fn.MaximumEventAgeInSeconds = retries, age
            self._save(fn)
        return self.get_event_invoke_config(name)

    def get_event_invoke_config(self, name: str) -> dict[str, Any]:
        fn = self.get(name)
        if fn.MaximumRetryAttempts is None:
            raise ResourceNotFound(
                f"The function {fn.arn(self.region)} doesn't have an EventInvokeConfig"
            )
        return {
            "FunctionArn": fn.arn(self.region) + ":$LATEST",
            "MaximumRetryAttempts": fn.MaximumRetryAttempts,
            "MaximumEventAgeInSeconds": fn.MaximumEventAgeInSeconds,
            "LastModified": datetime.datetime.now(datetime.timezone.utc).timestamp(),
            "DestinationConfig": {"OnSuccess": {}, "OnFailure": {}},
        }

    def _unpack(self, zip_bytes: bytes) -> _Unpacked:
        """Unpack a zip into a folder of its own under ``STATE_DIR/unpacking/``, with the zip
        itself beside it (``FOLDER.zip``) and its digest, all made before the registry's lock
        is taken: a large zip's hash and write would hold it (and every invoke) up.

        Its Python files are compiled there, once: environments import them from a read-only
        task root (a sandbox's ``/var/task``), where Python could not keep what it compiles,
        and would compile every module again in every cold start (about 25 ms of CPU for
        the mu worker). A file that does not compile is left for the import to report.

        Raises:
            InvalidParameterValue: not a zip, or one that unpacks above ``UNZIPPED_LIMIT``;
                nothing is left behind.
        """
        folder = self.state_dir / "unpacking" / uuid.uuid4().hex
        folder.parent.mkdir(parents=True, exist_ok=True)
        unpacked = _Unpacked(folder, hashlib.sha256(zip_bytes).digest(), len(zip_bytes))
        try:
            _unzip(zip_bytes, folder)
            compileall.compile_dir(folder, quiet=2)
            unpacked.zip.write_bytes(zip_bytes)
        except BaseException:
            _discard(unpacked)
            raise
        return unpacked

    def _store_code(self, fn: Function, unpacked: _Unpacked) -> None:
        """Give ``fn`` the code in ``unpacked`` (moved into place; lock held)."""
        home = self.state_dir / "functions" / fn.FunctionName
        code_dir = home / f"code-{unpacked.digest.hex()[:16]}"
        home.mkdir(parents=True, exist_ok=True)
        if not code_dir.is_dir():
            unpacked.folder.rename(code_dir)
        os.replace(unpacked.zip, home / "code.zip")
        fn.CodeSha256 = base64.b64encode(unpacked.digest).decode()
        fn.CodeSize, fn.code_dir = unpacked.size, str(code_dir)

    def _save(self, fn: Function) -> None:
        home = self.state_dir / "functions" / fn.FunctionName
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / "config.json.tmp"
        tmp.write_text(json.dumps(asdict(fn)))
        tmp.replace(home / "config.json")

    # -- invocations ---------------------------------------------------------------------

    def invoke(self, name: str, payload: bytes, kind: str, tail: bool) -> InvokeResult:
        """Invoke ``name`` (``kind`` RequestResponse, Event or DryRun). An Event or DryRun
        is answered now; a RequestResponse when it ends, through the result's ``run``."""
        fn = self.get(name)
        request_id = str(uuid.uuid4())
        if kind == "DryRun":
            return InvokeResult(204, request_id=request_id)
        if kind == "Event":
            if len(payload) > ASYNC_LIMIT:
                raise RequestTooLarge(f"{len(payload)} byte payload is above {ASYNC_LIMIT}")
            self._check_json(payload)
            with self._lock:
                if self._closed:
                    raise EmulatorError(503, "ServiceException", "the emulator is stopping")
                self._record(Invocation(request_id, fn.FunctionName, kind))
                if self.duplicate_rate and self._duplicate_rng.random() < self.duplicate_rate:
                    # A second delivery, queued. AWS would repeat the request id; here the
                    # two run at once and a run's files are named by it, so the copy gets
                    # its own.
                    self.duplicated += 1
                    copy_id = str(uuid.uuid4())
                    self._record(Invocation(copy_id, fn.FunctionName, kind))
                    self._queue.append((fn.FunctionName, payload, copy_id, 0))
                    self._dispatch()
                if self._queue or self._active >= self.concurrency_limit:
                    self._queue.append((fn.FunctionName, payload, request_id, 0))
                    self._dispatch()
                    return InvokeResult(202, request_id=request_id)
                self._active += 1  # a slot, held for the start below
            return InvokeResult(202, request_id=request_id, start=functools.partial(
                self._start_first, fn.FunctionName, payload, request_id))
        if kind != "RequestResponse":
            raise InvalidParameterValue(f"InvocationType {kind!r} is not one of "
                                        "RequestResponse, Event, DryRun")
        if len(payload) > SYNC_LIMIT:
            raise RequestTooLarge(f"{len(payload)} byte payload is above {SYNC_LIMIT}")
        self._check_json(payload)
        with self._lock:
            if self._active >= self.concurrency_limit:
                raise TooManyRequests("Rate Exceeded.", "ConcurrentInvocationLimitExceeded")
            self._active += 1
            record = self._record(Invocation(request_id, fn.FunctionName, kind, "running", 1))
        return InvokeResult(0, request_id=request_id, run=functools.partial(
            self._run, self._code(fn), payload, record, tail))

    def _run(self, code: Code, payload: bytes, record: Invocation, tail: bool,
             answer: Callable[[InvokeResult], None]) -> None:
        """Start a synchronous invocation whose slot is taken; ``answer`` its outcome."""

        def done(result: Result) -> None:
            with self._lock:
                self._active -= 1
                self._ended(record, result)
                self._dispatch()
            answer(self._answer(result, tail, record.request_id))

        self.runner.launch(code, payload, record.request_id, done)

    def _code(self, fn: Function) -> Code:
        """``fn.code()``, made once per revision of ``fn`` (every change of its code or
        configuration gives it a new ``RevisionId``) rather than once per invocation."""
        cached = self._codes.get(fn.FunctionName)
        if cached is None or cached[0] != fn.RevisionId:
            cached = fn.RevisionId, fn.code(self.region)
            self._codes[fn.FunctionName] = cached
        return cached[1]

    def _record(self, invocation: Invocation) -> Invocation:
        """Keep ``invocation`` (lock held), forgetting the oldest beyond the limit."""
        self._invocations[invocation.request_id] = invocation
        while len(self._invocations) > KEEP_INVOCATIONS:
            self._invocations.popitem(last=False)
        return invocation

    @staticmethod
    def _ended(record: Invocation | None, result: Result | None) -> None:
        if record is None:
            return
        if result is None:
            record.status = "failed"
            return
        record.status = "succeeded" if result.ok else "failed"
        record.error = result.error
        record.log_path = result.log_path

    def _attempt(self, request_id: str) -> Invocation | None:
        """Count a new attempt of a (possibly forgotten) invocation."""
        with self._lock:
            record = self._invocations.get(request_id)
            if record is not None:
                record.attempts += 1
                record.status = "running"
            return record

    def invocation(self, request_id: str) -> Invocation:
        """The record of a recent invocation (a copy).

        Raises:
            ResourceNotFound: no such invocation, or forgotten (see ``KEEP_INVOCATIONS``).
        """
        with self._lock:
            record = self._invocations.get(request_id)
            if record is None:
                raise ResourceNotFound(f"no record of invocation {request_id}")
            return dataclasses.replace(record)

    @staticmethod
    def _check_json(payload: bytes) -> None:
        if payload.strip():
            try:
                json.loads(payload)
            except (ValueError, RecursionError) as exc:
                raise EmulatorError(400, "InvalidRequestContentException",
                                    f"Could not parse request body into json: {exc}") from exc

    @staticmethod
    def _answer(result: Result, tail: bool, request_id: str) -> InvokeResult:
        log = base64.b64encode(result.log_tail()) if tail else None
        if result.ok:
            return InvokeResult(200, result.body, None, log, request_id)
        return InvokeResult(200, json.dumps(result.error).encode(), "Unhandled", log, request_id)

    def _dispatch(self) -> None:
        """Start queued Event invocations while slots are free (lock held)."""
        while self._queue and self._active < self.concurrency_limit and not self._closed:
            self._active += 1
            self._start_async(*self._queue.popleft())

    def _start_first(self, name: str, payload: bytes, request_id: str) -> None:
        """The first attempt of an Event that took a free slot. Starting through a fork
        server is one write, so the HTTP layer calls this right after sending the 202 (see
        ``InvokeResult.start``)."""
        if not self._start_async(name, payload, request_id, 0):
            with self._lock:
                self._dispatch()  # its slot is free again

    def _start_async(self, name: str, payload: bytes, request_id: str, attempt: int) -> bool:
        """Start an attempt of an Event invocation whose slot is taken; the runner's watcher
        calls :meth:`_async_done` when it ends. False if the function is gone (the event
        is dropped, as on AWS, and the slot freed)."""
        try:
            fn = self.get(name)
        except EmulatorError:
            with self._lock:
                self._active -= 1
                record = self._invocations.get(request_id)
                if record is not None:
                    record.status = "dropped"
                self._lock.notify_all()
            return False
        self._attempt(request_id)
        allowed = 2 if fn.MaximumRetryAttempts is None else fn.MaximumRetryAttempts
        self.runner.launch(self._code(fn), payload, request_id, functools.partial(
            self._async_done, name, payload, request_id, attempt, allowed))
        return True

    def _async_done(
        self, name: str, payload: bytes, request_id: str, attempt: int, allowed: int,
        result: Result,
    ) -> None:
        """An attempt ended: record it, queue a retry if it failed and one is left."""
        with self._lock:
            self._active -= 1
            record = self._invocations.get(request_id)
            self._ended(record, result)
            if not result.ok and attempt < allowed and not self._closed:
                if record is not None:
                    record.status = "queued"
                self._queue.append((name, payload, request_id, attempt + 1))
            self._dispatch()
            self._lock.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs or waits; True if that happened within ``timeout``."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._active and not self._queue, timeout)

    def close(self) -> None:
        """Refuse new invocations and kill running ones."""
        with self._lock:
            self._closed = True
            self._queue.clear()
        self.runner.close()
