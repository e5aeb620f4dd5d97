"""``mu emulator --spares N`` as a user runs it: a subprocess, boto3 against what it prints.

The spares are seen from outside only: each environment's Init prints a line, so the function's
log streams (read through the CloudWatch Logs API) show an environment as soon as its Init ran,
before any invocation reaches it.
"""

from __future__ import annotations

import base64
import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.integration.test_emulator import CREDS, ROLE, bundle, mu_emulator, wait_for

HANDLER = b'''
import json, os, time
print("init", os.getpid(), flush=True)
def handler(event, context):
    time.sleep(event.get("seconds", 0))
    return {"pid": os.getpid()}
'''


def initialised(logs: Any, group: str) -> set[int]:
    """The pids of the environments whose Init has run, from their log streams."""
    try:
        streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
    except logs.exceptions.ResourceNotFoundException:
        return set()
    pids: set[int] = set()
    for stream in streams:
        got = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"],
                                  startFromHead=True)
        pids.update(int(e["message"].split()[1]) for e in got["events"]
                    if e["message"].startswith("init "))
    return pids


def test_spares_are_initialised_ahead_and_take_the_next_cold_start(tmp_path: Path) -> None:
    with mu_emulator("--spares", "2", "--state-dir", str(tmp_path)) as proc:
        assert proc.stdout is not None
        lambda_url = proc.stdout.readline().split()[-1]
        s3_url = proc.stdout.readline().split()[-1]  # moto: CloudWatch Logs too
        lam = boto3.client("lambda", endpoint_url=lambda_url,
                           config=Config(retries={"max_attempts": 1}, read_timeout=60),
                           **CREDS)
        logs = boto3.client("logs", endpoint_url=s3_url, **CREDS)
        lam.create_function(FunctionName="spared", Runtime="python3.12", Role=ROLE,
                            Handler="handler.handler", Timeout=30,
                            Code={"ZipFile": bundle(HANDLER)})

        def invoke(seconds: float) -> tuple[int, str]:
            resp = lam.invoke(FunctionName="spared", LogType="Tail",
                              Payload=json.dumps({"seconds": seconds}).encode())
            return (json.loads(resp["Payload"].read())["pid"],
                    base64.b64decode(resp["LogResult"]).decode())

        first, _ = invoke(0)
        # The first invocation's environment and, after it, two spares: three Inits, while
        # nothing more was invoked.
        assert wait_for(lambda: len(initialised(logs, "/aws/lambda/spared")) == 3)
        spares = initialised(logs, "/aws/lambda/spared") - {first}
        assert len(spares) == 2
        # Two at once: the idle warm environment takes one; a spare, not a new environment,
        # takes the other, and its REPORT is a cold start's.
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(invoke, [1, 1]))
        by_pid = dict(runs)
        assert first in by_pid and "Init Duration" not in by_pid.pop(first)
        [(spare, report)] = by_pid.items()
        assert spare in spares and "Init Duration" in report
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
