"""What makes an object in S3 a complete output: its SHA-256 and size, recorded at upload.

Theory of operation
-------------------
A worker uploads every output with a SHA-256 checksum that S3 itself verifies on receipt
(``ChecksumAlgorithm="SHA256"``: S3 refuses the object if the bytes it got do not hash to
what the client computed while sending) and with two metadata entries written from the
worker's own reading of the file: :data:`SHA256_KEY` (base64, as S3 spells checksums) and
:data:`SIZE_KEY` (bytes). S3 writes an object whole or not at all, so an object either does
not exist or is exactly what one attempt produced.

The coordinator never trusts existence alone: :func:`complete` accepts an object only if its
metadata is there, its length equals the recorded size, and the whole-object SHA-256 that S3
holds equals the recorded digest. ``--resume`` skips exactly those outputs.

Downloads ask S3 for the stored checksum (botocore then checks the body it streams) and, when
the object carries :data:`SHA256_KEY`, the worker checks its own digest of the written file
too; either mismatch is a failure naming the object.

Pure: the hashing reads a file, nothing here talks to S3 (callers pass the ``head_object``
response).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["SHA256_KEY", "SIZE_KEY", "complete", "file_digest", "metadata", "mismatch"]

SHA256_KEY: Final = "mu-sha256"
"""User metadata entry holding the base64 SHA-256 of the object (``x-amz-meta-mu-sha256``)."""
SIZE_KEY: Final = "mu-size"
"""User metadata entry holding the object's size in bytes."""

_CHUNK = 1024 * 1024


def file_digest(path: str) -> tuple[str, int]:
    """The base64 SHA-256 and the size of the file at ``path``.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return base64.b64encode(digest.digest()).decode(), size


def metadata(sha256: str, size: int) -> dict[str, str]:
    """The user metadata an output is uploaded with."""
    return {SHA256_KEY: sha256, SIZE_KEY: str(size)}


def mismatch(head: Mapping[str, Any]) -> str | None:
    """Why a ``head_object``/``get_object`` response does not describe a complete output.

    Returns:
        ``None`` if the object is complete, else a short reason.
    """
    meta = head.get("Metadata") or {}
    recorded = meta.get(SHA256_KEY)
    size = meta.get(SIZE_KEY)
    if not recorded or size is None:
        return "no recorded checksum (not written by a mu worker, or by an older one)"
    if not str(size).isdigit() or int(size) != int(head.get("ContentLength", -1)):
        return f"size {head.get('ContentLength')} differs from the recorded {size}"
    stored = head.get("ChecksumSHA256")
    # Workers upload in one PUT with a SHA-256 that S3 keeps. Without it (written some other
    # way, or in parts, whose checksum is one of part checksums, "...-N") the recorded
    # digest cannot be checked against the bytes, so the object is not trusted.
    if not stored or "-" in stored:
        return "S3 holds no whole-object SHA-256 to check the recorded one against"
    if stored != recorded:
        return f"S3's SHA-256 {stored} differs from the recorded {recorded}"
    return None


def complete(head: Mapping[str, Any]) -> bool:
    """Whether the object ``head`` describes is a complete output (see :func:`mismatch`)."""
    return mismatch(head) is None
