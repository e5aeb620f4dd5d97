"""mu: burst-parallel jobs on AWS Lambda, driven by per-worker state machines over mutual TLS.

This package's top level re-exports the pure core only (errors, protocol, states), so that
importing ``mu.worker`` inside a Lambda bundle loads nothing beyond the standard library.
"""

from __future__ import annotations

__version__ = "0.1.0"
