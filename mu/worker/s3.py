"""S3 transfers for ``retrieve`` and ``upload``.

Theory of operation
-------------------
One boto3 S3 client per invocation, made on first use (:class:`S3`), configured only by the
standard environment (credentials, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, which
boto3 honours by itself) and the region from the invocation. Local runs point the worker at a
moto server through that environment; nothing here knows about it.

Downloads stream ``get_object`` into the file and uploads use ``put_object`` with the open
file, so a missing key or bucket fails with S3's own error code (``NoSuchKey``,
``NoSuchBucket``) rather than a bare HTTP status.

Integrity (:mod:`mu.integrity`): an upload sends a SHA-256 that S3 verifies on receipt and
records the worker's own digest and size of the file in the object's metadata; the digest S3
reports back must equal the worker's. A download asks for the stored checksum, which botocore
checks against the streamed body, and checks the file written against the recorded digest
when there is one. A mismatch fails the transfer, naming the object.

Rehearsal faults (:meth:`S3.inject_errors`): each S3 call may be answered, before it leaves,
by a made-up 503 ``SlowDown``, which the client's own retries then handle as they would a real
one. Every failure becomes
:class:`TransferError`, whose text names the operation, ``s3://bucket/key``, the S3 error code
and its message; the command layer turns it into ``FAIL(...)`` and keeps serving.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mu.integrity import SHA256_KEY, file_digest, metadata

__all__ = ["S3", "TransferError"]

_CHUNK = 1024 * 1024


class TransferError(Exception):
    """A transfer failed; ``str()`` is the text that goes into ``FAIL(...)``."""


class S3:
    """The invocation's S3 client, made lazily (creating a client costs ~100 ms).

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
        """The boto3 S3 client (made on the first call; safe from several threads).

        Raises:
            TransferError: boto3 could not make a client (bad region, missing package).
        """
        with self._lock:
            if self._client is None:
                try:
                    import boto3

                    self._client = boto3.client("s3", region_name=self.region or None)
                    self._client.meta.events.register("before-send.s3", self._maybe_fail)
                except Exception as exc:  # boto3 raises several unrelated types here
                    raise TransferError(
                        f"cannot make an S3 client for region {self.region!r}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            return self._client

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
