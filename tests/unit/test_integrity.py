"""mu.integrity: the digest of a file and what counts as a complete output."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from mu.integrity import SHA256_KEY, SIZE_KEY, complete, file_digest, metadata, mismatch

DATA = b"y4m chunk " * 300_000  # larger than one read


def head_for(data: bytes, **changes: Any) -> dict[str, Any]:
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    head: dict[str, Any] = {
        "ContentLength": len(data),
        "ChecksumSHA256": digest,
        "Metadata": metadata(digest, len(data)),
    }
    head.update(changes)
    return head


def test_file_digest_is_base64_sha256_and_size(tmp_path: Path) -> None:
    path = tmp_path / "chunk"
    path.write_bytes(DATA)
    digest, size = file_digest(str(path))
    assert size == len(DATA)
    assert base64.b64decode(digest) == hashlib.sha256(DATA).digest()


def test_a_complete_output() -> None:
    assert complete(head_for(DATA))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"Metadata": {}}, "no recorded checksum"),
        ({"ContentLength": 5}, "size 5 differs from the recorded"),
        ({"ChecksumSHA256": "AAAA"}, "S3's SHA-256 AAAA differs"),
        ({"ChecksumSHA256": None}, "S3 holds no whole-object SHA-256"),
        ({"ChecksumSHA256": "abc=-3"}, "S3 holds no whole-object SHA-256"),  # multipart
    ],
)
def test_incomplete_outputs(changes: dict[str, Any], reason: str) -> None:
    why = mismatch(head_for(DATA, **changes))
    assert why is not None and reason in why
    assert not complete(head_for(DATA, **changes))


def test_metadata_names() -> None:
    assert metadata("x", 3) == {SHA256_KEY: "x", SIZE_KEY: "3"}
    assert mismatch({"ContentLength": 3, "Metadata": {SHA256_KEY: "x", SIZE_KEY: "three"}})
