"""The route table: (method, path regex) -> handler name in :mod:`emulator.responses`."""

from __future__ import annotations

import re

__all__ = ["ROUTES", "match"]

_NAME = r"(?P<name>[^/]+)"

ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        ("POST", r"^/2015-03-31/functions/?$", "create_function"),
        ("GET", r"^/2015-03-31/functions/?$", "list_functions"),
        ("GET", rf"^/2015-03-31/functions/{_NAME}/?$", "get_function"),
        ("DELETE", rf"^/2015-03-31/functions/{_NAME}/?$", "delete_function"),
        ("GET", rf"^/2015-03-31/functions/{_NAME}/configuration/?$", "get_configuration"),
        ("PUT", rf"^/2015-03-31/functions/{_NAME}/code/?$", "update_code"),
        ("PUT", rf"^/2015-03-31/functions/{_NAME}/configuration/?$", "update_configuration"),
        ("POST", rf"^/2015-03-31/functions/{_NAME}/versions/?$", "publish_version"),
        ("POST", rf"^/2015-03-31/functions/{_NAME}/invocations/?$", "invoke"),
        ("PUT", rf"^/2019-09-25/functions/{_NAME}/event-invoke-config/?$", "put_invoke_config"),
        ("POST", rf"^/2019-09-25/functions/{_NAME}/event-invoke-config/?$", "put_invoke_config"),
        ("GET", rf"^/2019-09-25/functions/{_NAME}/event-invoke-config/?$", "get_invoke_config"),
    ]
]


def match(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The handler name and path parameters for a request, or None."""
    for m, pattern, handler in ROUTES:
        if m == method:
            found = pattern.match(path)
            if found:
                return handler, found.groupdict()
    return None
