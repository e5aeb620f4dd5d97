"""S3 transfers for ``retrieve`` and ``upload``.

Theory of operation
-------------------
The boto3 S3 client is made once per process and reused by every invocation a warm Lambda
execution environment serves (:func:`shared_client`): making one costs about 0.1 CPU-s
(botocore decodes its service model and endpoint rules), and its connection pool keeps the
connections to S3 open from one invocation to the next. The handler module makes it at Init
(:func:`warm_up`, for the environment's ``AWS_REGION``); an invocation that names another
region gets one more, made on first use. A client is configured only by the standard
environment (credentials, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, which boto3
honours by itself) and the region; the clients are kept per region *and* per those
environment variables, so a process whose environment changes (tests, a handler run by hand)
never gets a client made for another endpoint or other credentials. At most
:data:`MAX_CLIENTS` are kept; the oldest is closed. Local runs point the worker at a moto
server through that environment; nothing here knows about it.

:class:`S3` is one invocation's view: it holds no client of its own, except in a rehearsal
with injected S3 errors, where the hook that injects them goes on a private client (a hook
on the shared one would outlive the invocation and fire in the next); :meth:`S3.close`
closes that one at the end of the invocation.

Downloads stream ``get_object`` into the file and uploads use ``put_object`` with the open
file, so a missing key or bucket fails with S3's own error code (``NoSuchKey``,
``NoSuchBucket``) rather than a bare HTTP status.

Integrity (:mod:`mu.integrity`): an upload sends a SHA-256 of the bytes sent (botocore's,
not the worker's: S3 verifies it on receipt, and where an S3 does not, moto for one, the
digest it reports back is still of what it received) and records the worker's own digest and
size of the file in the object's metadata; the digest S3 reports back must equal the
worker's. A download asks for the stored checksum, which botocore checks against the
streamed body, and checks the file written against the recorded digest when there is one. A
mismatch fails the transfer, naming the object.

Rehearsal faults (:meth:`S3.inject_errors`): each S3 call may be answered, before it leaves,
by a made-up 503 ``SlowDown``, which the client's own retries then handle as they would a real
one. Every failure becomes
:class:`TransferError`, whose text names the operation, ``s3://bucket/key``, the S3 error code
and its message; the command layer turns it into ``FAIL(...)`` and keeps serving.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from mu.integrity import SHA256_KEY, file_digest, metadata

__all__ = ["MAX_CLIENTS", "S3", "TransferError", "shared_client", "warm_up"]

log = logging.getLogger("mu.worker")

_CHUNK = 1024 * 1024

MAX_CLIENTS: Final = 4
"""Shared clients kept at most (one per region and AWS environment in use)."""

_ENVIRONMENT: Final = (
    "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
)
"""What boto3 reads from the environment to make an S3 client: part of a client's key."""

_clients: collections.OrderedDict[tuple[str | None, ...], Any] = collections.OrderedDict()
_clients_lock = threading.Lock()


class TransferError(Exception):
    """A transfer failed; ``str()`` is the text that goes into ``FAIL(...)``."""


def _make_client(region: str) -> Any:
    try:
        import boto3

        return boto3.client("s3", region_name=region or None)
    except Exception as exc:  # boto3 raises several unrelated types here
        raise TransferError(
            f"cannot make an S3 client for region {region!r}: {type(exc).__name__}: {exc}"
        ) from exc


def shared_client(region: str) -> Any:
    """The process's S3 client for ``region`` and the current AWS environment, made now
    if there is none yet (safe from several threads).

    Raises:
        TransferError: boto3 could not make a client (bad region, missing package).
    """
    # boto3 takes an empty region from the environment: the same client as that region's.
    region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION", "")
    key = (region, *(os.environ.get(name) for name in _ENVIRONMENT))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _make_client(region)
            while len(_clients) > MAX_CLIENTS:
                _, old = _clients.popitem(last=False)
                old.close()
        _clients.move_to_end(key)
        return client


def warm_up(region: str | None = None) -> bool:
    """Make the shared client at Init, for ``region`` (default: ``AWS_REGION``, the
    environment's). Never raises: a client that cannot be made now is reported by the
    first transfer that needs it.

    Returns:
        Whether the client is ready.
    """
    try:
        shared_client(os.environ.get("AWS_REGION", "") if region is None else region)
    except TransferError as exc:
        log.warning("no S3 client at Init: %s", exc)
        return False
    return True


class S3:
    """One invocation's S3 transfers, through the process's shared client.

    Args:
        region: the region passed to ``boto3.client``.
    """

    def __init__(self, region: str) -> None:
        self.region = region
        self._client: Any = None
        self._lock = threading.Lock()
        self._error_rate = 0.0
        self._rng = random.Random(0)
        self.injected = 0  # rehearsal S3 errors injected so far

    def inject_errors(self, rate: float, seed: int) -> None:
        """Answer each later S3 call with 503 SlowDown with probability ``rate`` (rehearsals)."""
        with self._lock:
            self._error_rate = rate
            self._rng = random.Random(seed)

    def _maybe_fail(self, request: Any = None, **_: Any) -> Any:
        """botocore ``before-send`` hook: a made-up SlowDown instead of sending, sometimes."""
        with self._lock:
            if not self._error_rate or self._rng.random() >= self._error_rate:
                return None
            self.injected += 1
        from botocore.awsrequest import AWSResponse

        body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                b"<Message>Please reduce your request rate (injected fault).</Message></Error>")
        return AWSResponse(request.url if request else "", 503, {}, _Body(body))

    def client(self) -> Any:
        """The boto3 S3 client: the shared one, or this invocation's own once rehearsal
        errors are armed (safe from several threads).

        Raises:
            TransferError: boto3 could not make a client (bad region, missing package).
        """
        with self._lock:
            if not self._error_rate:
                return shared_client(self.region)
            if self._client is None:
                self._client = _make_client(self.region)
                self._client.meta.events.register("before-send.s3", self._maybe_fail)
            return self._client

    def close(self) -> None:
        """End of the invocation: close its own client, if it made one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def download(self, bucket: str, key: str, path: str) -> None:
        """Write ``s3://bucket/key`` to ``path``.

        Raises:
            TransferError: naming the object and the S3 error code or local error.
        """
        where = f"retrieve s3://{bucket}/{key}"
        client = self.client()
        try:
            response = client.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except (ClientError, BotoCoreError) as exc:
            raise TransferError(f"{where}: {_describe(exc)}") from exc
        body = response["Body"]
        try:
            # The caller resolved the path; a symlink put there since is not followed.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with open(fd, "wb") as out:
                while chunk := body.read(_CHUNK):
                    out.write(chunk)
        except OSError as exc:
            raise TransferError(f"{where}: cannot write {path}: {exc.strerror or exc}") from exc
        except BotoCoreError as exc:  # FlexibleChecksumError: the body is not what S3 holds
            raise TransferError(f"{where}: {_describe(exc)}") from exc
        finally:
            body.close()
        recorded = (response.get("Metadata") or {}).get(SHA256_KEY)
        if recorded:
            try:
                digest, _size = file_digest(path)
            except OSError as exc:
                raise TransferError(f"{where}: cannot read back {path}: {exc}") from exc
            if digest != recorded:
                raise TransferError(
                    f"{where}: checksum mismatch: the object's recorded SHA-256 is {recorded}, "
                    f"the bytes received hash to {digest}"
                )

    def upload(self, path: str, bucket: str, key: str) -> None:
        """Store the file ``path`` as ``s3://bucket/key``.

        Raises:
            TransferError: naming the object and the S3 error code or local error.
        """
        where = f"upload s3://{bucket}/{key}"
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed in the finally below
        except OSError as exc:
            raise TransferError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
        try:
            digest, size = file_digest(path)
            if os.fstat(handle.fileno()).st_size != size:
                raise TransferError(f"{where}: {path} changed while it was being read")
            response = self.client().put_object(
                Bucket=bucket, Key=key, Body=handle, ContentLength=size,
                ChecksumAlgorithm="SHA256", Metadata=metadata(digest, size),
            )
        except (ClientError, BotoCoreError) as exc:
            raise TransferError(f"{where}: {_describe(exc)}") from exc
        except OSError as exc:
            raise TransferError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
        finally:
            handle.close()
        stored = response.get("ChecksumSHA256")
        if stored and stored != digest:
            raise TransferError(
                f"{where}: checksum mismatch: S3 stored SHA-256 {stored}, the file hashes to "
                f"{digest}"
            )


class _Body:
    """The raw body of a made-up response (what botocore reads from urllib3)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, *_: Any, **__: Any) -> Any:
        yield self._data

    def read(self, *_: Any, **__: Any) -> bytes:
        data, self._data = self._data, b""
        return data


def _describe(exc: Exception) -> str:
    """``Code: message`` for botocore ClientError, ``Type: message`` for anything else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = error.get("Code") or type(exc).__name__
        message = error.get("Message") or str(exc)
        return f"{code}: {message}"
    return f"{type(exc).__name__}: {exc}"
