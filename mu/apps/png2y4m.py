"""The png2y4m job: PNG frames in S3 -> Y4M chunks in S3, one chunk per worker.

Theory of operation
-------------------
Inputs are ``s3://BUCKET/{video}-{informat}/%08d.png`` numbered from 1. The worker that
plays chunk ``c`` (the actor number; the coordinator numbers actors from the offset ``-o``)
converts frames ``1 + f*c ... f*(c+1)`` and uploads
``s3://BUCKET/{video}-y4m_{f:02d}/%08d.y4m`` numbered ``c``.

The machine, as in 2016 (states defined in reverse order, each naming the next)::

    ConfigState --> RetrieveLoopState --(frame < f)--> RetrieveAndRunState --+
                          ^                                                  |
                          +--------------------------------------------------+
                          +--(done)--> UploadState --> FinalState

* ConfigState sets the blocking mode, the bucket, the command's input pattern and output
  file (all under the worker's private ``##TMPDIR##``) and the output key;
* RetrieveAndRunState sets ``inkey``/``targfile``, retrieves one PNG and runs
  ``png2y4m -i -d -o ##OUTFILE## ##INFILE##``, which appends the frame to the chunk and
  deletes the PNG; the worker answers ``OK:RETVAL(n)`` whatever the exit status, and any
  ``n`` but 0 fails the actor with the status and the binary's own message in the reason;
* UploadState uploads the chunk and says ``quit:``.

The worker's private tmpdir is the only place anything is written or deleted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mu.aws import aws_errors
from mu.errors import ConfigError
from mu.integrity import complete, file_digest, metadata
from mu.protocol import Retval
from mu.states import CommandListState, ForLoopState, MachineState, TerminalState, Transition

__all__ = [
    "COMMAND",
    "OUTPUT_SHOWN",
    "ConfigState",
    "FinalState",
    "Png2Y4MConfig",
    "RetrieveAndRunState",
    "RetrieveLoopState",
    "UploadState",
]

COMMAND = "-i -d -o ##OUTFILE## ##INFILE##"
"""The arguments lambdaize puts after ``./png2y4m`` (the 2016 POST_ARGS)."""


@dataclass(frozen=True)
class Png2Y4MConfig:
    """What a png2y4m run converts (the 2016 ``-v -b -i -f`` flags)."""

    video: str = "sintel-1k"
    bucket: str = "excamera-us-east-1"
    informat: str = "png16"
    frames: int = 6

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"frames per worker must be >= 1, got {self.frames}")
        for name in ("video", "bucket", "informat"):
            value = getattr(self, name)
            if not value or any(c in value for c in ":\0\n"):
                raise ConfigError(f"{name} {value!r} must be non-empty, without ':' or newlines")

    @property
    def input_prefix(self) -> str:
        return f"{self.video}-{self.informat}/"

    @property
    def output_prefix(self) -> str:
        return f"{self.video}-y4m_{self.frames:02d}/"

    def input_key(self, frame: int) -> str:
        """S3 key of input frame ``frame`` (numbered from 1)."""
        return f"{self.input_prefix}{frame:08d}.png"

    def output_key(self, chunk: int) -> str:
        """S3 key of output chunk ``chunk``."""
        return f"{self.output_prefix}{chunk:08d}.y4m"

    def frames_of(self, chunk: int) -> range:
        """The input frame numbers chunk ``chunk`` converts."""
        return range(1 + self.frames * chunk, 1 + self.frames * (chunk + 1))


class FinalState(TerminalState):
    extra = "(finished)"


class UploadState(CommandListState):
    extra = "(uploading)"
    commandlist = [(None, "upload:"), ("OK:UPLOAD", "quit:")]
    nextState = FinalState


OUTPUT_SHOWN = 2000
"""Characters of the binary's output kept in an actor's failure reason."""


class RetrieveAndRunState(CommandListState):
    extra = "(retrieving and converting)"

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        cfg: Png2Y4MConfig = self.config
        frame = cfg.frames_of(self.actorNum)[self.info["frame"]]
        self.frame_key = f"s3://{cfg.bucket}/{cfg.input_key(frame)}"
        self.commandlist = [
            (None, f"set:inkey:{cfg.input_key(frame)}"),
            f"set:targfile:##TMPDIR##/{frame:08d}.png",
            "retrieve:",
            "run:",
            ("OK:RETVAL(0)", None),
        ]

    def transition(self, msg: str | None) -> Transition:
        # A non-zero exit is an answer like any other; say what the binary said.
        result = Retval.parse(msg) if msg is not None else None
        if result is not None and result.status != 0:
            output = result.output.strip()
            if len(output) > OUTPUT_SHOWN:
                output = f"{output[:OUTPUT_SHOWN]}... ({len(output)} chars)"
            how = (
                f"was killed by signal {-result.status}"
                if result.status < 0
                else f"exited with status {result.status}"
            )
            return self.fail(
                f"png2y4m {how} converting {self.frame_key}: {output or '(no output)'}"
            )
        return super().transition(msg)


class RetrieveLoopState(ForLoopState):
    extra = "(next frame)"
    iterKey = "frame"
    loopState = RetrieveAndRunState
    exitState = UploadState

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        self.iterFin = self.config.frames


RetrieveAndRunState.nextState = RetrieveLoopState


class ConfigState(CommandListState):
    """The first state: configure the worker for its chunk."""

    extra = "(configuring)"

    def __init__(self, prevState: MachineState | None = None, *args: Any, **kw: Any) -> None:
        super().__init__(prevState, *args, **kw)
        cfg: Png2Y4MConfig = self.config
        chunk = f"##TMPDIR##/{self.actorNum:08d}.y4m"
        self.commandlist = [
            ("OK:HELLO", "seti:nonblock:0"),
            f"set:bucket:{cfg.bucket}",
            "set:cmdinfile:##TMPDIR##/%08d.png",
            f"set:cmdoutfile:{chunk}",
            f"set:fromfile:{chunk}",
            f"set:outkey:{cfg.output_key(self.actorNum)}",
            None,
        ]

    nextState = RetrieveLoopState


# ------------------------------------------------------------------ the job's S3 layout


def upload_inputs(s3: Any, cfg: Png2Y4MConfig, directory: str, create_bucket: bool) -> int:
    """Upload ``directory/*.png`` (sorted) as input frames 1, 2, ... of ``cfg``.

    Args:
        s3: a boto3 S3 client.
        cfg: the run's configuration (bucket, video, informat).
        directory: where the PNG frames are.
        create_bucket: create the bucket if it is missing (local runs).

    Returns:
        The number of frames uploaded.

    Raises:
        ConfigError: no PNG in ``directory``, or the bucket is missing and may not be made.
    """
    return upload_numbered(s3, cfg.bucket, directory, "png", cfg.input_key, 1, create_bucket)


def upload_numbered(s3: Any, bucket: str, directory: str, suffix: str,
                    key: Callable[[int], str], first: int, create_bucket: bool) -> int:
    """Upload ``directory/*.suffix`` (sorted) to ``bucket`` as ``key(first)``,
    ``key(first + 1)``, ... each with its SHA-256 (one S3 verifies, and the digest the
    workers check after downloading); the number uploaded.

    Raises:
        ConfigError: no such file in ``directory``, or the bucket is missing and may not be
            made.
    """
    from pathlib import Path

    files = sorted(Path(directory).glob(f"*.{suffix}"))
    if not files:
        raise ConfigError(f"no .{suffix} files in input directory {directory!r}")
    if not bucket_exists(s3, bucket):
        if not create_bucket:
            raise ConfigError(f"bucket {bucket!r} does not exist")
        create(s3, bucket)
    for number, path in enumerate(files, first):
        digest, size = file_digest(str(path))
        where = key(number)
        with aws_errors(s3_where(s3, f"upload {path} to s3://{bucket}/{where}")):
            if size < _MULTIPART_BYTES:  # one PUT: a third of upload_file's CPU for 341 KB
                with open(path, "rb") as body:
                    s3.put_object(Bucket=bucket, Key=where, Body=body, ChecksumAlgorithm="SHA256",
                                  Metadata=metadata(digest, size))
            else:
                s3.upload_file(str(path), bucket, where, ExtraArgs={
                    "ChecksumAlgorithm": "SHA256", "Metadata": metadata(digest, size)})
    return len(files)


_MULTIPART_BYTES = 8 * 1024 * 1024
"""From this size on, an input goes up through boto3's transfer manager (its multipart
threshold); below it, in one ``put_object`` (botocore's SHA-256 of the bytes sent, which S3
verifies; the file's own in the metadata, which the workers check)."""


def finished_chunks(s3: Any, cfg: Png2Y4MConfig, chunks: list[int]) -> list[int]:
    """The chunks whose output object exists and is complete (:func:`mu.integrity.complete`).

    One listing (of the run's own output keys) finds the outputs that exist; only those are
    looked at more closely.
    """
    from botocore.exceptions import ClientError

    if not chunks or not bucket_exists(s3, cfg.bucket):
        return []
    outputs = [cfg.output_key(chunk) for chunk in chunks]
    present = keys_under(s3, cfg.bucket, cfg.output_prefix, min(outputs), max(outputs))
    finished = []
    for chunk in chunks:
        key = cfg.output_key(chunk)
        if key not in present:
            continue
        try:
            with aws_errors(s3_where(s3, f"look up s3://{cfg.bucket}/{key}")):
                try:
                    head = s3.head_object(Bucket=cfg.bucket, Key=key, ChecksumMode="ENABLED")
                except ClientError as exc:
                    if _status(exc) not in (403, 404):
                        raise
                    continue  # gone since the listing
        except ConfigError:
            continue  # gone since the listing
        if complete(head):
            finished.append(chunk)
    return finished


def bucket_exists(s3: Any, bucket: str) -> bool:
    """Whether ``bucket`` exists and is reachable with these credentials.

    Raises:
        ConfigError, LaunchError: S3 could not answer (:mod:`mu.aws`: no credentials, the
            endpoint unreachable, ...); "no such bucket" and "forbidden" answer False.
    """
    import urllib.request
    from http.client import HTTPException

    # A pre-signed HEAD first (see keys_under): no boto3 client is needed when the bucket
    # answers. Any doubt goes to the client below, which says what is wrong; the short
    # timeout keeps an endpoint that never answers from costing much before it does.
    try:
        url = s3.generate_presigned_url("head_bucket", Params={"Bucket": bucket}, ExpiresIn=300)
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5):
            return True
    except (OSError, HTTPException, ValueError):
        pass
    from botocore.exceptions import ClientError

    with aws_errors(s3_where(s3, f"look up bucket {bucket!r}")):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _status(exc) in (403, 404):
                return False
            raise
    return True


def create(s3: Any, bucket: str) -> None:
    """Create ``bucket`` (local runs), translating S3's errors (:mod:`mu.aws`)."""
    with aws_errors(s3_where(s3, f"create bucket {bucket!r}")):
        s3.create_bucket(Bucket=bucket)


def s3_where(s3: Any, what: str) -> str:
    """``"S3 <what> at <endpoint>"``: the ``where`` of an S3 call's error message."""
    return f"S3 {what} at {s3.meta.endpoint_url}"


def _status(exc: Any) -> int | None:
    status: int | None = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status


def keys_under(
    s3: Any, bucket: str, prefix: str, first: str = "", last: str | None = None,
    page_size: int = 1000,
) -> set[str]:
    """The keys in ``bucket`` that start with ``prefix``, from ``first`` to ``last``.

    The listing starts just before ``first`` and stops at the first page that reaches
    ``last`` (both compared as S3 orders keys, by their UTF-8 bytes; ``None``: to the end of
    the prefix), so a run lists the keys it needs rather than every key under the prefix.
    Some keys outside the range may be returned too, at most a page (``page_size`` keys)
    beyond it.

    Each page is fetched with a pre-signed ListObjectsV2 URL and only its ``<Key>``
    elements are read: botocore's response parser costs about 0.1 ms per key (dates,
    sizes, owners), which was most of a 1,000-worker run's start-up. Any problem on that
    path (HTTP error, unreachable endpoint, unexpected body) hands the rest of the listing
    to boto3's paginator, with its retries and error reporting.
    """
    from http.client import HTTPException

    present: set[str] = set()
    start_after = first[:-1] if first else ""  # sorts just before ``first``
    while True:
        try:
            page, truncated = _list_page(s3, bucket, prefix, start_after, page_size)
        except (OSError, HTTPException, ValueError, SyntaxError):  # urllib's errors, bad XML
            present.update(_paginate(s3, bucket, prefix, start_after, last, page_size))
            return present
        present.update(page)
        if not truncated or not page or _reached(page[-1], last):
            return present
        start_after = page[-1]


def _reached(key: str, last: str | None) -> bool:
    """Whether a listing at ``key`` is past ``last`` (S3 orders keys by their UTF-8 bytes)."""
    return last is not None and key.encode() >= last.encode()


def _list_page(
    s3: Any, bucket: str, prefix: str, start_after: str, page_size: int
) -> tuple[list[str], bool]:
    """One page of keys (in S3's order) and whether more follow."""
    import urllib.request

    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if start_after:
        params["StartAfter"] = start_after
    url = s3.generate_presigned_url("list_objects_v2", Params=params, ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=60) as response:
        return listing_keys(response.read())


_XML_DECLARATION = re.compile(rb'<\?xml version="1\.[0-9]"(?: encoding="(?i:utf-8)")?'
                              rb'(?: standalone="(?:yes|no)")?\s*\?>\s*')
_ROOT = re.compile(r'<ListBucketResult(?: xmlns="[^"<&]*")?\s*>')
_ENTRY_KEY = re.compile(r"<Contents>\s*<Key>([^<]*)</Key>")
_TRUNCATED = re.compile(r"<IsTruncated>([^<]*)</IsTruncated>")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_REFERENCE = re.compile(r"&(?:#x([0-9a-fA-F]+)|#([0-9]+)|(amp|lt|gt|quot|apos));")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _unescape(text: str) -> str:
    """XML character data with its five entities and character references resolved."""
    if "&" not in text:
        return text

    def resolve(match: re.Match[str]) -> str:
        hexadecimal, decimal, name = match.groups()
        if name:
            return _ENTITIES[name]
        code = int(hexadecimal, 16) if hexadecimal else int(decimal)
        if not (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF
                or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF):
            raise ValueError(f"not an XML character: &#{code};")
        return chr(code)

    resolved = _REFERENCE.sub(resolve, text)
    if "&" in _REFERENCE.sub("", text):
        raise ValueError("an undefined entity or a bare '&' in a key")
    return resolved


def listing_keys(body: bytes) -> tuple[list[str], bool]:
    """The ``Contents/Key`` values of a ListObjectsV2 answer (in order), and whether it is
    truncated: what ElementTree reads from it, without importing it.

    Only the shape S3 sends is read: an optional UTF-8 XML declaration, the
    ``ListBucketResult`` root in S3's default namespace, each ``Contents`` starting with its
    one ``Key`` and no ``Key`` elsewhere, text with the five entities and character
    references, XML's line-end normalisation. Anything else (CDATA, comments, processing
    instructions, another encoding, characters XML does not allow, a truncated body, keys
    and entries that do not pair up) raises ValueError, and the caller falls back to
    botocore's parser.
    """
    declaration = _XML_DECLARATION.match(body)
    document = body[declaration.end() if declaration else 0:].decode("utf-8")
    if "<!" in document or "<?" in document or _NOT_XML.search(document):
        raise ValueError("not a plain listing (CDATA, a comment, a processing instruction "
                         "or a character XML does not allow)")
    if "\r" in document:
        document = document.replace("\r\n", "\n").replace("\r", "\n")
    document = document.strip()
    if not _ROOT.match(document) or not document.endswith("</ListBucketResult>"):
        raise ValueError(f"not a listing: {document[:60]!r}")
    found = _ENTRY_KEY.findall(document)
    entries = document.count("<Contents>")
    if not (len(found) == entries == document.count("</Contents>") == document.count("<Key>")):
        raise ValueError(f"{len(found)} keys do not pair up with {entries} entries")
    keys = [_unescape(key) if "&" in key else key for key in found]
    truncated = _TRUNCATED.findall(document)
    if len(truncated) > 1:
        raise ValueError("more than one IsTruncated")
    return keys, bool(truncated) and _unescape(truncated[0]) == "true"


def _paginate(
    s3: Any, bucket: str, prefix: str, start_after: str, last: str | None, page_size: int
) -> set[str]:
    present: set[str] = set()
    extra = {"StartAfter": start_after} if start_after else {}
    with aws_errors(s3_where(s3, f"list s3://{bucket}/{prefix}")):
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}, **extra
        ):
            keys = [obj["Key"] for obj in page.get("Contents", [])]
            present.update(keys)
            if keys and _reached(keys[-1], last):
                break
    return present


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct ``numbers`` as (first, last) runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def missing_inputs(s3: Any, cfg: Png2Y4MConfig, chunks: list[int]) -> list[str]:
    """The input keys that ``chunks`` need and the bucket lacks.

    One listing per run of consecutive frames (one for ``-n``/``-o``, more for a sparse
    ``-N``), each covering only those frames' keys.
    """
    needed = [cfg.input_key(f) for c in chunks for f in cfg.frames_of(c)]
    present: set[str] = set()
    for lo, hi in _runs([f for c in chunks for f in cfg.frames_of(c)]):
        keys = [cfg.input_key(lo), cfg.input_key(hi)]
        present |= keys_under(s3, cfg.bucket, cfg.input_prefix, min(keys), max(keys))
    return [key for key in needed if key not in present]


def preflight_inputs(s3: Any, cfg: Png2Y4MConfig, chunks: list[int]) -> list[str]:
    """Every problem with the bucket and input frames, as messages (empty: all is well)."""
    if not bucket_exists(s3, cfg.bucket):
        return [f"bucket {cfg.bucket!r} does not exist or is not reachable"]
    missing = missing_inputs(s3, cfg, chunks)
    if not missing:
        return []
    need = sum(cfg.frames for _ in chunks)
    shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
    return [
        f"{len(missing)} of the {need} input frames are missing from s3://{cfg.bucket}/"
        f"{cfg.input_prefix} ({len(chunks)} workers x {cfg.frames} frames): {shown}"
    ]


def download_outputs(s3: Any, cfg: Png2Y4MConfig, chunks: list[int], directory: str) -> list[str]:
    """Download the output chunks that exist into ``directory``; return the paths written."""
    from pathlib import Path

    from botocore.exceptions import ClientError

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for chunk in chunks:
        key = cfg.output_key(chunk)
        target = out / key.rsplit("/", 1)[-1]
        with aws_errors(s3_where(s3, f"download s3://{cfg.bucket}/{key}")):
            try:
                s3.download_file(cfg.bucket, key, str(target))
            except ClientError as exc:
                if _status(exc) not in (403, 404):
                    raise
                continue  # that chunk failed; the run report names it
        written.append(str(target))
    return written
