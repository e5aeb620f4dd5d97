"""Launcher backends: implementations of :class:`mu.launch.Launcher`, picked by name.

Theory of operation
-------------------
:data:`BACKENDS` is an explicit table from a backend name to a factory. Each factory imports
its module only when called, so ``import backends`` stays cheap and a backend whose
dependencies are absent does not break the others. Only the composition root (``mu.cli``)
calls :func:`get_backend`; everything else receives the launcher instance.

- ``lambda``: AWS Lambda or a Lambda-compatible endpoint (:mod:`backends.aws_lambda`).
- ``local``: starts the emulator and its moto S3 on loopback and launches through the
  ``lambda`` launcher pointed at it (:mod:`backends.local`).
- ``none``: launches nothing; writes the payload out so workers can be started by hand
  (:mod:`backends.none`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mu.errors import ConfigError
from mu.launch import Launcher

__all__ = ["BACKENDS", "get_backend"]


def _lambda(**options: Any) -> Launcher:
    from backends.aws_lambda import LambdaLauncher

    return _construct(LambdaLauncher, "lambda", options)


def _local(**options: Any) -> Launcher:
    from backends.local import LocalLauncher

    return _construct(LocalLauncher, "local", options)


def _none(**options: Any) -> Launcher:
    from backends.none import NoneLauncher

    return _construct(NoneLauncher, "none", options)


def _construct(cls: Callable[..., Any], name: str, options: dict[str, Any]) -> Launcher:
    """Call ``cls(**options)``, turning an unknown option into a ConfigError naming it."""
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options) - set(params))
    if unknown and not takes_any:
        known = ", ".join(sorted(k for k, p in params.items() if p.kind is not p.VAR_POSITIONAL))
        raise ConfigError(
            f"backend {name!r} does not take option(s) {', '.join(unknown)} (it takes: {known})"
        )
    launcher: Launcher = cls(**options)
    return launcher


BACKENDS: dict[str, Callable[..., Launcher]] = {
    "lambda": _lambda,
    "local": _local,
    "none": _none,
}
"""Backend name -> factory taking the backend's keyword options."""


def get_backend(name: str, **options: Any) -> Launcher:
    """Build the launcher called ``name``.

    Options whose value is ``None`` are dropped, so a caller can pass every flag it has and
    let each backend use its own defaults.

    Args:
        name: one of :data:`BACKENDS`.
        **options: keyword arguments of that backend's constructor, e.g. ``endpoint_url``,
            ``connections``, ``pipeline`` for ``lambda``; ``endpoint_url``,
            ``s3_endpoint_url`` for ``local``; ``payload_out`` for ``none``.

    Returns:
        the launcher (call its ``close()`` when done).

    Raises:
        ConfigError: unknown backend (the message lists the choices) or unknown option.

    >>> get_backend("lambda", endpoint_url="http://127.0.0.1:5000").name
    'lambda'
    """
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r} (choices: {', '.join(sorted(BACKENDS))})"
        ) from None
    return factory(**{k: v for k, v in options.items() if v is not None})
