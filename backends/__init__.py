"""Backends: the places a run can happen, each a :class:`mu.launch.Site`, picked by name.

Theory of operation
-------------------
:data:`BACKENDS` is an explicit table from a backend name to a factory that takes the typed
:class:`~mu.options.SiteOptions`. Each factory imports its module only when called, so
``import backends`` stays cheap and a backend whose dependencies are absent does not break
the others. Only the composition root (``mu.cli``) calls :func:`get_backend`; everything else
receives the site (or its launcher). What differs between backends is a member of the site,
so no caller asks which backend it has.

- ``lambda``: AWS Lambda or a Lambda-compatible endpoint (:mod:`backends.lambda_site`,
  launching through :mod:`backends.aws_lambda`).
- ``local``: starts the emulator and its moto S3 on loopback and launches through the
  ``lambda`` launcher pointed at it (:mod:`backends.local`).
- ``none``: launches nothing; writes the payload out so workers can be started by hand
  (:mod:`backends.none`).

:func:`run_emulator` is ``mu emulator``: the local backend's emulator in the foreground;
:func:`log_sources` where ``mu logs`` reads a backend's Lambda logs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mu.errors import ConfigError
from mu.launch import Site
from mu.options import LogsOptions, SiteOptions

__all__ = ["BACKENDS", "get_backend", "log_sources", "run_emulator"]


def _lambda(options: SiteOptions) -> Site:
    from backends.lambda_site import LambdaSite

    return LambdaSite(options)


def _local(options: SiteOptions) -> Site:
    from backends.local import LocalSite

    return LocalSite(options)


def _none(options: SiteOptions) -> Site:
    from backends.none import NoneSite

    return NoneSite(options)


BACKENDS: dict[str, Callable[[SiteOptions], Site]] = {
    "lambda": _lambda,
    "local": _local,
    "none": _none,
}
"""Backend name -> factory taking the site's options."""


def get_backend(name: str, options: SiteOptions | None = None) -> Site:
    """Build the site called ``name``.

    Args:
        name: one of :data:`BACKENDS`.
        options: endpoints, regions and the rest (default: all defaults).

    Returns:
        the site (call its ``close()`` when done).

    Raises:
        ConfigError: unknown backend (the message lists the choices).
        LaunchError: the site could not start (the local emulator).

    >>> get_backend("lambda", SiteOptions(endpoint_url="http://127.0.0.1:5000")).name
    'lambda'
    """
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r} (choices: {', '.join(sorted(BACKENDS))})"
        ) from None
    return factory(options or SiteOptions(backend=name))


def run_emulator(argv: Sequence[str], prog: str = "mu emulator") -> int:
    """Parse ``argv`` with the emulator's own parser and run it in the foreground until
    interrupted; return the exit status.

    Raises:
        ConfigError: the emulator package is not installed.
    """
    from backends.local import emulator_parser
    from backends.local import run_emulator as run

    return run(emulator_parser(prog).parse_args(list(argv)))



def log_sources(options: LogsOptions) -> list[tuple[Any, str]]:
    """The CloudWatch Logs clients ``mu logs`` reads with (see :mod:`backends.logs`)."""
    from backends.logs import log_sources as sources

    return sources(options)
