"""The ``lambda`` site: AWS Lambda (or a Lambda-compatible endpoint) and AWS's S3.

Theory of operation
-------------------
:class:`AwsAccount` is the standard AWS credential chain, looked at once
(:class:`mu.aws.AwsSetup`: plain keys read without botocore, anything else through the boto3
session; an unknown ``AWS_PROFILE`` is found here), whether it has credentials, and S3 clients
that pre-sign with them. A problem is kept, not raised, so that a run's preflight reports it beside
its own (:meth:`LambdaSite.check_credentials`); the ``none`` site uses the same account.

:class:`LambdaSite` adds the launcher (:class:`~backends.aws_lambda.LambdaLauncher`, made on
first use) and the dial-back address: the local address that routes to the region's Lambda
endpoint (:func:`~backends.aws_lambda.route_address`), unless ``--host-addr`` names one.
The coordinator listens on every interface and admits 128 handshakes at once, since each
waits a round trip to AWS. boto3 and botocore are imported only when the session is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mu.errors import ConfigError, LaunchError
from mu.launch import FunctionSettings, Launcher
from mu.options import SiteOptions

if TYPE_CHECKING:
    from mu.aws import AwsSetup

__all__ = ["AwsAccount", "LambdaSite", "function_settings"]


def function_settings(client: Any, name: str, region: str) -> FunctionSettings | None:
    """Function ``name``'s settings through a boto3 Lambda ``client`` (one
    GetFunctionConfiguration call); None when it is not deployed.

    Raises:
        ConfigError, LaunchError: AWS refused or could not be reached (named).
    """
    from backends.aws_lambda import aws_errors

    with aws_errors("read the configuration of function", name, region):
        try:
            conf = client.get_function_configuration(FunctionName=name)
        except client.exceptions.ResourceNotFoundException:
            return None
    return FunctionSettings.from_configuration(conf)


class AwsAccount:
    """The standard AWS credential chain, for a site that talks to AWS
    (:class:`mu.aws.AwsSetup`, made on first use), with its problems kept, not raised.

    Args:
        needs: what the credentials are for, in the "no credentials" line.
    """

    def __init__(self, needs: str) -> None:
        self._needs = needs
        self._setup: AwsSetup | None = None
        self._problem = ""

    def _aws(self) -> AwsSetup | None:
        if self._setup is None and not self._problem:
            from mu.aws import AwsSetup

            try:
                self._setup = AwsSetup()
            except (ConfigError, LaunchError) as exc:
                self._problem = str(exc)
        return self._setup

    @property
    def session(self) -> Any:
        """The boto3 session, made on first use.

        Raises:
            ConfigError: it could not be made (an unknown ``AWS_PROFILE``).
        """
        aws = self._aws()
        if aws is None:
            raise ConfigError(self._problem)
        return aws.session

    def problems(self) -> list[str]:
        """What is wrong (an unknown profile, no credentials); empty when usable."""
        aws = self._aws()
        if aws is None:
            return [self._problem]
        if aws.credentials is None:
            return [
                f"no AWS credentials found ({self._needs}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run `aws configure`"
            ]
        return []

    def s3_client(self, endpoint_url: str | None, region: str) -> Any:
        """The run's S3 client (:class:`mu.aws.LazyS3`): it pre-signs the preflight's
        requests with the credentials found, and makes a boto3 client only when needed.

        Raises:
            ConfigError: the credential chain could not be read (see :meth:`problems`).
        """
        aws = self._aws()
        if aws is None:
            raise ConfigError(self._problem)
        return aws.s3(endpoint_url, region)


class LambdaSite:
    """A :class:`mu.launch.Site` on AWS Lambda, or on a Lambda-compatible endpoint.

    Args:
        options: ``endpoint_url``, ``s3_endpoint_url``, ``host_addr``, ``code_bucket``.
    """

    name = "lambda"
    listen_host = "0.0.0.0"
    max_handshakes = 128
    deploys_jobs = False
    private = False
    default_role = ""

    def __init__(self, options: SiteOptions) -> None:
        self.options = options
        self.regions = options.regions
        self.account = AwsAccount("the coordinator reads the input frames in S3 and invokes "
                                  "Lambda")
        self._launcher: Any = None

    @property
    def max_zipped(self) -> int | None:
        from mu.lambdaize import MAX_ZIPPED

        return None if self.options.code_bucket else MAX_ZIPPED

    @property
    def launcher(self) -> Launcher:
        if self._launcher is None:
            from backends.aws_lambda import LambdaLauncher

            self._launcher = LambdaLauncher(
                endpoint_url=self.options.endpoint_url,
                session=self.account.session,
                code_bucket=self.options.code_bucket,
            )
        launcher: Launcher = self._launcher
        return launcher

    def s3_client(self, region: str) -> Any:
        return self.account.s3_client(self.options.s3_endpoint_url, region)

    def logs_client(self, region: str) -> Any:
        # a Lambda-compatible endpoint (a running emulator) logs into its S3 server's
        # CloudWatch Logs API; AWS Lambda into AWS's
        from backends.logs import logs_client

        url = self.options.s3_endpoint_url if self.options.endpoint_url else None
        return logs_client(url, region, session=self.account.session)

    def function_settings(self, name: str, region: str) -> FunctionSettings | None:
        launcher: Any = self.launcher  # a LambdaLauncher: its boto3 client for the region
        return function_settings(launcher.client(region), name, region)

    def dial_back_address(self, region: str) -> str | None:
        if self.options.host_addr:
            return self.options.host_addr
        from backends.aws_lambda import route_address

        return route_address(region, self.options.endpoint_url)

    def check_credentials(self) -> list[str]:
        return self.account.problems()

    def duplicated(self) -> int:
        return 0

    def close(self) -> None:
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None
