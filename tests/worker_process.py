"""One worker invocation in a process of its own, entered as Lambda enters it.

``python -m tests.worker_process EVENT.json`` calls the real handler
(``lambda_function.lambda_handler``, which owns its process: it becomes the child subreaper
of what commands start) with the payload in ``EVENT.json`` and prints the summary as JSON.
Tests start it as a subprocess to see what the worker leaves behind when it is the process.
"""

from __future__ import annotations

import json
import sys

from mu.worker.lambda_function import lambda_handler


def main(argv: list[str]) -> int:
    """Serve the invocation in ``argv[1]``; print its summary."""
    with open(argv[1], encoding="utf-8") as handle:
        event = json.load(handle)
    print(json.dumps(lambda_handler(event, None)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
