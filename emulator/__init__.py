"""A local, Docker-free subset of the AWS Lambda API, with an embedded moto S3.

Layout follows moto's services: :mod:`emulator.models` keeps state and raises
:class:`~emulator.errors.EmulatorError`; :mod:`emulator.responses` turns requests into model
calls and is the only place errors become HTTP; :mod:`emulator.urls` is the route table;
:mod:`emulator.runner` runs invocations in execution environments under AWS's runtime
client, through the Lambda Runtime API (:mod:`emulator.environment` is what runs inside
them; :mod:`emulator.cloudwatch` writes their logs). :mod:`emulator.server` and
:mod:`emulator.s3` are the two servers (the second is moto's: S3 and CloudWatch Logs), both
on 127.0.0.1. This package imports nothing from mu.

Start both servers together for one run (``s3.S3Server`` is imported when needed, so
importing this package does not load moto)::

    with LocalCloud(state_dir=path) as cloud:
        cloud.lambda_endpoint_url, cloud.s3_endpoint_url
"""

from __future__ import annotations

from emulator.errors import EmulatorError
from emulator.server import LocalCloud, ThreadedEmulatorServer

__all__ = ["EmulatorError", "LocalCloud", "ThreadedEmulatorServer"]
