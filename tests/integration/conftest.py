"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.s3 import S3Server


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """The emulator's embedded S3 (moto) on 127.0.0.1, one per test module."""
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
