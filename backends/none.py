"""The ``none`` backend: launch nothing; write the payload so workers can be started by hand.

``launch()`` writes the invocation payload (JSON: coordinator address, port, run token, CA
certificate, worker certificate and key — never the coordinator's key, which
:meth:`mu.launch.WorkerPayload.to_json` refuses) to ``payload_out`` and reports every
requested invocation as not accepted, with the reason, since none was started.
Start a worker with ``python -c 'import json, lambda_function as f;
f.lambda_handler(json.load(open("payload.json")), None)'`` in an unpacked bundle.
"""

from __future__ import annotations

import os
import time
from typing import Any

from mu.launch import FunctionSpec, Invocation, LaunchReport, LaunchSpec

__all__ = ["NoneLauncher"]


class NoneLauncher:
    """A :class:`mu.launch.Launcher` that starts nothing."""

    name = "none"

    def __init__(self, payload_out: str | None = None) -> None:
        self.payload_out = payload_out

    def create_function(self, spec: FunctionSpec, region: str) -> dict[str, Any]:
        return {"FunctionName": spec.name, "Region": region}

    def function_exists(self, name: str, region: str) -> bool:
        return True

    def delete_function(self, name: str, region: str) -> None:
        return None

    def launch(self, spec: LaunchSpec) -> LaunchReport:
        now = time.monotonic()
        if self.payload_out:
            fd = os.open(self.payload_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(spec.payload)
        why = f"backend none: start workers by hand with the payload in {self.payload_out}"
        invocations = tuple(
            Invocation(i, spec.regions[i % len(spec.regions)], False, error=why, attempts=0,
                       sent_at=now, done_at=now)
            for i in range(spec.count)
        )
        return LaunchReport(invocations, now, now)

    def close(self) -> None:
        return None
