"""The Lambda entry point: ``lambda_function.lambda_handler``.

Deliberately thin. The command this function runs (``./png2y4m -i -d -o ##OUTFILE##
##INFILE##`` for the png2y4m job) sits beside this file in ``mu_command.json``, written by
lambdaize; without that file the command is empty (commands can still come with ``run:cmd``).
Everything else is :func:`mu.worker.session.run`, which returns a JSON-able summary.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mu.worker import session

HERE = os.path.dirname(os.path.abspath(__file__))
COMMAND_FILE = "mu_command.json"


def load_command(directory: str = HERE) -> str:
    """The function's command template from ``mu_command.json`` (empty if absent).

    Args:
        directory: where to look.

    Returns:
        The ``command`` field of the file, or ``""`` if there is no file.

    Raises:
        ValueError: the file exists but is not a JSON object with a string ``command``.
    """
    try:
        with open(os.path.join(directory, COMMAND_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return ""
    command = data.get("command", "") if isinstance(data, dict) else None
    if not isinstance(command, str):
        raise ValueError(f"{COMMAND_FILE}: 'command' must be a string, got {command!r}")
    return command


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Serve one invocation.

    Args:
        event: the invocation payload (see DESIGN §3 of the mu docs).
        context: the Lambda context object.

    Returns:
        The worker's summary: how the session ended, commands served, errors.
    """
    return session.run(
        event, command=load_command(), context=context, cwd=HERE, own_process=True
    )
