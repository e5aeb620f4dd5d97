"""S3 transfers for ``retrieve`` and ``upload``.

Theory of operation
-------------------
One boto3 S3 client per invocation, made on first use (:class:`S3`), configured only by the
standard environment (credentials, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, which
boto3 honours by itself) and the region from the invocation. Local runs point the worker at a
moto server through that environment; nothing here knows about it.

Downloads stream ``get_object`` into the file and uploads use ``put_object`` with the open
file, so a missing key or bucket fails with S3's own error code (``NoSuchKey``,
``NoSuchBucket``) rather than a bare HTTP status. Every failure becomes
:class:`TransferError`, whose text names the operation, ``s3://bucket/key``, the S3 error code
and its message; the command layer turns it into ``FAIL(...)`` and keeps serving.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

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
            response = client.get_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise TransferError(f"{where}: {_describe(exc)}") from exc
        body = response["Body"]
        try:
            with open(path, "wb") as out:
                while chunk := body.read(_CHUNK):
                    out.write(chunk)
        except OSError as exc:
            raise TransferError(f"{where}: cannot write {path}: {exc.strerror or exc}") from exc
        except BotoCoreError as exc:
            raise TransferError(f"{where}: {_describe(exc)}") from exc
        finally:
            body.close()

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
            size = os.fstat(handle.fileno()).st_size
            self.client().put_object(Bucket=bucket, Key=key, Body=handle, ContentLength=size)
        except (ClientError, BotoCoreError) as exc:
            raise TransferError(f"{where}: {_describe(exc)}") from exc
        except OSError as exc:
            raise TransferError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
        finally:
            handle.close()


def _describe(exc: Exception) -> str:
    """``Code: message`` for botocore ClientError, ``Type: message`` for anything else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = error.get("Code") or type(exc).__name__
        message = error.get("Message") or str(exc)
        return f"{code}: {message}"
    return f"{type(exc).__name__}: {exc}"
