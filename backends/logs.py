"""Where a function's Lambda logs are read: AWS's CloudWatch Logs, or a running emulator's.

``mu logs`` reads one way, through boto3's ``logs`` client (:mod:`mu.logs`); what differs
between the backends is only the client: ``lambda`` reads AWS's (the region from
``--region`` or the AWS configuration), ``local`` the embedded moto server of every
``mu emulator`` running on this machine, newest first, with the local credentials (or of
the one started with ``--state-dir``). ``--endpoint-url`` names the endpoint outright.
:func:`logs_client` makes every ``logs`` client of the backends: these, and the ones each
site's ``logs_client`` gives the bill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mu.errors import ConfigError, LaunchError
from mu.options import DEFAULT_REGION, LogsOptions

__all__ = ["log_sources", "logs_client"]


def log_sources(options: LogsOptions) -> list[tuple[Any, str]]:
    """The ``logs`` clients to read ``options.function``'s log group with, in order (the
    first that has the group is used), each with the words that say where it reads.

    Raises:
        ConfigError: no AWS region or configuration.
        LaunchError: no emulator running (or none with ``options.state_dir``).
    """
    if options.backend == "lambda":
        region = _aws_region(options.region)
        where = f"at {options.endpoint_url}" if options.endpoint_url else "on AWS"
        return [(logs_client(options.endpoint_url, region), f"{where} (region {region})")]
    from backends.local import LOCAL_CREDENTIALS

    region = options.region or DEFAULT_REGION
    urls = [options.endpoint_url] if options.endpoint_url else _emulator_urls(options.state_dir)
    return [(logs_client(url, region, LOCAL_CREDENTIALS), f"at {url} (region {region})")
            for url in urls]


def _emulator_urls(state_dir: str | None) -> list[str]:
    """The endpoints of the running emulators (the one using ``state_dir``, if given); the
    embedded moto server serves every AWS API, CloudWatch Logs included, on its S3 port."""
    try:
        from emulator import running as registry
    except ImportError:
        raise LaunchError("the emulator package is not installed, so no emulator can be "
                          "running here; pass --endpoint-url") from None
    running = [(r.s3_url, str(r.state_dir)) for r in registry.running()]
    if state_dir:
        wanted = Path(state_dir).resolve()
        chosen = [r for r in running if Path(r[1]).resolve() == wanted]
        if not chosen:
            raise LaunchError(
                f"no emulator with state dir {wanted} is running (running: "
                f"{', '.join(r[1] for r in running) or 'none'}); its logs are kept only "
                "while it runs")
        running = chosen
    if not running:
        raise LaunchError(
            "no emulator is running: start one with `mu emulator` (a run's private emulator "
            "keeps its logs only while that run lasts), or pass --endpoint-url")
    return list(dict.fromkeys(url for url, _ in running))


def logs_client(url: str | None, region: str, credentials: dict[str, str] | None = None,
                session: Any = None) -> Any:
    """A boto3 ``logs`` client for ``url`` (None: AWS's) in ``region``: with ``credentials``
    (boto3's keyword names), else ``session``'s, else boto3's default chain."""
    import boto3
    from botocore.config import Config

    from mu.aws import aws_errors

    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10,
                    read_timeout=60)
    with aws_errors("CloudWatch Logs client"):
        return (session or boto3).client("logs", endpoint_url=url, region_name=region,
                                         config=config, **(credentials or {}))


def _aws_region(region: str | None) -> str:
    if region:
        return region
    import boto3

    from mu.aws import aws_errors

    with aws_errors("AWS configuration"):
        found = boto3.session.Session().region_name
    if not found:
        raise ConfigError("no AWS region: pass --region or set AWS_DEFAULT_REGION")
    return str(found)
