"""AWS errors, translated once into mu's error tree (STYLE §2 rule 5).

Theory of operation
-------------------
Every call mu makes to AWS (or to an AWS-compatible endpoint: the emulator, moto) goes
through boto3, which raises botocore's exceptions. A user must never see one of those as a
traceback: the boundary around each call (``with aws_errors("what, where"):``) turns it into
one line of mu's tree, built by :func:`translate`, that names what was being done and where,
what went wrong, and what to do about it::

    S3 head bucket 'frames' at http://127.0.0.1:9: cannot connect to http://127.0.0.1:9/frames
    (is the endpoint up? check --s3-endpoint-url/--endpoint-url and the network)

The mapping, most specific first:

====================================================  =============  ==========================
botocore exception                                     mu error       says
====================================================  =============  ==========================
``ProfileNotFound``                                    ConfigError    unknown ``AWS_PROFILE``
``NoCredentialsError``, partial/SSO/retrieval errors   ConfigError    no credentials
``NoRegionError``                                      ConfigError    no region
``EndpointConnectionError``, ``ConnectTimeoutError``   LaunchError    cannot connect
``SSLError``, ``ProxyConnectionError``                 LaunchError    cannot connect
``ReadTimeoutError``, ``ConnectionClosedError``, ...   LaunchError    no answer
``ClientError`` access denied / bad keys               ConfigError    access denied
``ClientError`` not found (bucket, function)           ConfigError    does not exist
``ClientError`` throttling, 5xx                        LaunchError    after botocore's retries
any other ``BotoCoreError`` / ``ClientError``          LaunchError    code and message
====================================================  =============  ==========================

Throttling and 5xx answers are retried by botocore's ``standard`` retry mode before they get
here (``AWS_MAX_ATTEMPTS`` bounds it); what arrives here has already been retried.
:func:`aws_errors` is :func:`mu.errors.map_exceptions` with :func:`translate` as the mapping,
so there is one translation path for the whole of mu. botocore is imported only when a
translation is needed, so importing this module costs nothing at start-up.

:class:`LazyS3` is the run's S3 client, made on first use. Creating a boto3 client costs
about 0.1 CPU-s (botocore decodes its JSON service model and endpoint rules) and importing
boto3 some more; a run's start-up needs only pre-signed URLs for the preflight's few
requests (HeadBucket, ListObjectsV2 pages), which :meth:`LazyS3.generate_presigned_url`
signs itself (:mod:`mu.sigv4`, stdlib only) when the credentials are known and the
endpoint is given or is AWS's usual one (:func:`aws_s3_host`). Everything else (and every error path) goes to the boto3 client, made then.

:func:`plain_credentials` finds the credentials botocore's default chain would find when they
are plain keys in the environment or in the default profile of the shared files, without
importing botocore (0.15 CPU-s with boto3's session); in every other case (a named profile,
SSO, assume-role, web identity, a credential process, container or instance credentials,
an unreadable file) it answers None and the boto3 session resolves them, as before.
:class:`AwsSetup` puts the two together for a run: credentials found now, the boto3 session
made only when something needs it, and the run's :class:`LazyS3`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from mu.errors import ConfigError, LaunchError, MuError, map_exceptions

__all__ = [
    "ACCESS_CODES", "NOT_FOUND_CODES", "THROTTLING_CODES", "AwsSetup", "LazyS3", "aws_errors",
    "aws_s3_host", "lazy_s3", "plain_credentials", "translate",
]

ACCESS_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnrecognizedClientException",
    "InvalidAccessKeyId", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "ExpiredToken", "ExpiredTokenException", "InvalidToken", "AuthFailure", "403",
})
"""Error codes meaning the credentials are wrong or lack a permission."""

NOT_FOUND_CODES = frozenset({
    "NoSuchBucket", "ResourceNotFoundException", "NoSuchKey", "404", "NotFound",
})
"""Error codes meaning the named bucket, key or function does not exist."""

THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "SlowDown", "RequestThrottled", "RequestThrottledException",
    "ProvisionedThroughputExceededException", "429",
})
"""Error codes meaning AWS throttled us (botocore retried them already)."""

_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run `aws configure`"
)


def _endpoint_hint(url: str, where: str) -> str:
    """What to check when ``url`` cannot be reached: the flag for that service's endpoint."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.path.startswith("/2015-03-31/") or host.startswith("lambda."):
        flag = "--endpoint-url (or AWS_ENDPOINT_URL_LAMBDA)"
    elif where.startswith("S3") or host.startswith("s3.") or ".s3." in host:
        flag = "--s3-endpoint-url (or AWS_ENDPOINT_URL_S3)"
    else:
        flag = "--endpoint-url/--s3-endpoint-url (or AWS_ENDPOINT_URL*)"
    return f"is the endpoint up? check {flag} and the network"


_CREDENTIAL_ERRORS = (
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
    "TokenRetrievalError", "SSOTokenLoadError", "UnauthorizedSSOTokenError",
    "NoAuthTokenError", "SSOError",
)
"""botocore's credential errors, by name (older botocore versions lack some)."""


def _endpoint(exc: BaseException) -> str:
    return str(getattr(exc, "kwargs", {}).get("endpoint_url", "") or "the endpoint")


def translate(exc: BaseException, where: str = "") -> MuError:
    """The mu error for a botocore exception raised while doing ``where``, on one line.

    Args:
        exc: a ``botocore.exceptions.BotoCoreError`` or ``ClientError``.
        where: what was being done and where ("S3 head bucket 'b' at http://...").

    Returns:
        a :class:`~mu.errors.ConfigError` (the user's setup: credentials, profile, a name
        that does not exist) or :class:`~mu.errors.LaunchError` (the service: unreachable,
        timing out, throttling, failing).
    """
    error = _translate(exc, where)
    return type(error)(" ".join(str(error).split()))  # AWS messages may hold newlines


def _translate(exc: BaseException, where: str) -> MuError:
    import botocore.exceptions as bx

    prefix = f"{where}: " if where else ""
    credential_errors = tuple(
        c for n in _CREDENTIAL_ERRORS if isinstance(c := getattr(bx, n, None), type)
    )
    if isinstance(exc, bx.ProfileNotFound):
        profile = getattr(exc, "kwargs", {}).get("profile", "?")
        return ConfigError(
            f"{prefix}AWS profile {profile!r} (AWS_PROFILE) is not in the AWS config or "
            "credentials files: list them with `aws configure list-profiles`, or unset "
            "AWS_PROFILE"
        )
    if isinstance(exc, credential_errors):
        return ConfigError(f"{prefix}no usable AWS credentials ({exc}): {_CREDENTIALS_HINT}")
    if isinstance(exc, bx.NoRegionError):
        return ConfigError(f"{prefix}no AWS region: pass -r/--regions or set AWS_DEFAULT_REGION")
    url = _endpoint(exc)
    hint = _endpoint_hint(url, where)
    if isinstance(exc, bx.ConnectTimeoutError):
        return LaunchError(f"{prefix}timed out connecting to {url} ({hint})")
    if isinstance(exc, bx.EndpointConnectionError):
        return LaunchError(f"{prefix}cannot connect to {url} ({hint})")
    if isinstance(exc, bx.SSLError | bx.ProxyConnectionError):
        return LaunchError(f"{prefix}{exc} ({hint})")
    if isinstance(exc, bx.ReadTimeoutError | bx.ConnectionClosedError):
        what = "timed out waiting for" if isinstance(exc, bx.ReadTimeoutError) else (
            "connection closed without an answer from")
        return LaunchError(f"{prefix}{what} {url} ({hint})")
    if isinstance(exc, bx.HTTPClientError):
        return LaunchError(f"{prefix}HTTP failure talking to {_endpoint(exc)}: {exc}")
    if isinstance(exc, bx.ClientError):
        return _client_error(exc, prefix)
    return LaunchError(f"{prefix}{type(exc).__name__}: {exc}")


def _client_error(exc: Any, prefix: str) -> MuError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    said = f"{code}: {message}" if message else code
    if code in ACCESS_CODES or status == 403:
        return ConfigError(
            f"{prefix}access denied ({said}): check the credentials and that they may do this"
        )
    if code in NOT_FOUND_CODES:
        return ConfigError(f"{prefix}does not exist ({said})")
    if code in THROTTLING_CODES or status == 429:
        return LaunchError(
            f"{prefix}throttled by AWS after retries ({said}): try again later, or ask for "
            "a higher limit"
        )
    if isinstance(status, int) and status >= 500:
        return LaunchError(f"{prefix}the service failed (HTTP {status}, {said}) after "
                           "retries: try again later")
    return LaunchError(f"{prefix}{said}")


@contextlib.contextmanager
def aws_errors(where: str) -> Iterator[None]:
    """Translate botocore exceptions raised inside the block with :func:`translate`.

    Args:
        where: what is being done and where, e.g. ``"create function f in us-east-1"``.

    Raises:
        ConfigError, LaunchError: ``from`` the botocore exception.
    """
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    with map_exceptions({BotoCoreError: translate, ClientError: translate, Boto3Error: translate},
                        where):
        yield


_PRESIGNABLE = {"head_bucket": "HEAD", "list_objects_v2": "GET"}
"""Operations :meth:`LazyS3.generate_presigned_url` signs without a boto3 client."""

_LIST_PARAMS = {"Prefix": "prefix", "MaxKeys": "max-keys", "StartAfter": "start-after"}


class LazyS3:
    """A boto3 S3 client made on first use, that pre-signs the preflight's requests without it.

    Attribute access (``head_bucket``, ``meta``, ``download_file``, ...) goes to the client,
    made by ``factory`` the first time. :meth:`generate_presigned_url` signs
    ``head_bucket`` and ``list_objects_v2`` itself (:mod:`mu.sigv4`; path-style URLs on
    ``endpoint_url``, or virtual-hosted ones on AWS's regional endpoint when
    :func:`aws_s3_host` vouches for it) while the client has not been made, ``region`` is
    given and ``credentials`` (access key, secret key, token) are at hand; otherwise the
    client signs.

    Args:
        factory: makes the boto3 client (``boto3.client("s3", ...)``).
        endpoint_url: the S3 endpoint the client uses (None: AWS's, which only it resolves).
        region: the signing region.
        credentials: ``(access_key, secret_key, token)`` (None: unknown; the client
            resolves them).
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        endpoint_url: str | None,
        region: str | None,
        credentials: tuple[str, str, str | None] | None,
    ) -> None:
        self._factory = factory
        self._client: Any = None
        self._endpoint_url = endpoint_url
        self._region = region
        self._credentials = credentials

    @property
    def client(self) -> Any:
        """The boto3 client, made now if it was not yet."""
        if self._client is None:
            with aws_errors("AWS configuration"):
                self._client = self._factory()
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def generate_presigned_url(
        self, ClientMethod: str, Params: dict[str, Any], ExpiresIn: int = 3600,
    ) -> str:
        """A pre-signed URL for ``ClientMethod`` (boto3's signature and meaning)."""
        bucket = Params.get("Bucket")
        base = None
        if self._client is None and self._region and self._credentials and isinstance(
                bucket, str) and ClientMethod in _PRESIGNABLE and set(Params) <= {
                "Bucket", *_LIST_PARAMS}:
            base = self._bucket_url(bucket)
        if base is None:
            url: str = self.client.generate_presigned_url(
                ClientMethod, Params=Params, ExpiresIn=ExpiresIn)
            return url
        from urllib.parse import quote, urlencode

        from mu.sigv4 import presign_url

        assert self._region and self._credentials  # for mypy
        query = ""
        if ClientMethod == "list_objects_v2":
            query = "?" + urlencode(
                [("list-type", "2")]
                + [(_LIST_PARAMS[k], str(v)) for k, v in Params.items() if k != "Bucket"],
                quote_via=quote,
            )
        access_key, secret_key, token = self._credentials
        return presign_url(_PRESIGNABLE[ClientMethod], base + query, region=self._region,
                           access_key=access_key, secret_key=secret_key, token=token,
                           expires=ExpiresIn)

    def _bucket_url(self, bucket: str) -> str | None:
        """The bucket's URL: path-style on the given endpoint; on AWS's own, virtual-hosted
        (``https://BUCKET.s3.REGION.amazonaws.com/``) when nothing could make botocore
        choose another endpoint (:func:`aws_s3_host`); else None (the client knows)."""
        from urllib.parse import quote

        if self._endpoint_url:
            return f"{self._endpoint_url.rstrip('/')}/{quote(bucket, safe='')}"
        if self._region and (host := aws_s3_host(self._region, bucket)):
            return f"https://{host}/"
        return None


_ENDPOINT_VARIABLES = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT", "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_S3_DISABLE_MULTIREGION_ACCESS_POINTS",
)
"""Variables that can change the S3 endpoint botocore uses (or the profile that does)."""


def aws_s3_host(region: str, bucket: str, environ: Mapping[str, str] | None = None) -> str | None:
    """AWS's virtual-hosted S3 host for ``bucket`` in ``region``, or None when botocore
    might use another endpoint or the name does not fit a host name.

    Only the commercial and GovCloud partitions' usual regions (``xx-name-N``), bucket names
    that are one DNS label (no dots: they would not match the certificate), no endpoint,
    FIPS or dual-stack setting in the environment, and a default profile in the config file
    that holds no more than keys, region and output. A wrong guess costs one failed request:
    the callers then ask the boto3 client.
    """
    import os
    import re

    env = os.environ if environ is None else environ
    if not re.fullmatch(r"(?:us|eu|ap|ca|sa|me|af|il|mx)-(?:gov-)?[a-z]+-[0-9]{1,2}", region):
        return None
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket) or "--" in bucket:
        return None  # dots, upper case, or the reserved ``--`` suffixes (xn--, --x-s3, ...)
    if any(env.get(name) is not None for name in _ENDPOINT_VARIABLES):
        return None
    path = env.get("AWS_CONFIG_FILE", "~/.aws/config")
    profile = path and _default_profile(os.path.expanduser(os.path.expandvars(path)), True)
    if profile is None or profile == "" or set(profile) - _PLAIN_PROFILE_KEYS:
        return None
    return f"{bucket}.s3.{region}.amazonaws.com"


def lazy_s3(
    endpoint_url: str | None,
    region: str | None,
    credentials: Mapping[str, str] | None = None,
    session: Any = None,
) -> LazyS3:
    """The run's S3 client (:class:`LazyS3`): from ``session`` (a boto3 session whose
    credentials are resolved now) or with ``credentials`` (``aws_access_key_id``, ...)."""

    def make() -> Any:
        if session is not None:
            return session.client("s3", endpoint_url=endpoint_url, region_name=region)
        import boto3

        return boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                            **(credentials or {}))

    keys = None
    if credentials:
        keys = (credentials["aws_access_key_id"], credentials["aws_secret_access_key"],
                credentials.get("aws_session_token"))
    elif session is not None and (found := session.get_credentials()) is not None:
        frozen = found.get_frozen_credentials()
        keys = (frozen.access_key, frozen.secret_key, frozen.token)
    return LazyS3(make, endpoint_url, region, keys)


class AwsSetup:
    """The AWS side of a run: credentials found now, the boto3 session made on first use.

    :attr:`credentials` are :func:`plain_credentials`' when they suffice, else the boto3
    session's (made now, its errors translated); :attr:`session` is the session (made when
    first asked for, with the same credentials); :meth:`s3` the run's :class:`LazyS3`.

    Raises:
        ConfigError, LaunchError: botocore could not resolve the credentials (an unknown
            ``AWS_PROFILE``, a broken SSO or assume-role setup, ...).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._session: Any = None
        self.credentials = plain_credentials(environ)
        """``(access_key, secret_key, token)``, or None: no credentials anywhere."""
        if self.credentials is None:
            with aws_errors("AWS configuration"):
                found = self.session.get_credentials()
            if found is not None:
                frozen = found.get_frozen_credentials()
                self.credentials = (frozen.access_key, frozen.secret_key, frozen.token)

    @property
    def session(self) -> Any:
        """The boto3 session (``boto3.session.Session()``), made now if it was not yet."""
        if self._session is None:
            with aws_errors("AWS configuration"):
                import boto3

                self._session = boto3.session.Session()
        return self._session

    def s3(self, endpoint_url: str | None, region: str | None) -> LazyS3:
        """The run's S3 client for ``endpoint_url`` (None: AWS's) in ``region``."""
        def make() -> Any:
            return self.session.client("s3", endpoint_url=endpoint_url, region_name=region)

        return LazyS3(make, endpoint_url, region, self.credentials)


_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_ENV_TOKENS = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_ENV_OTHER_WAYS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CREDENTIAL_EXPIRATION",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
)
"""Variables that make botocore's chain do more than read plain keys: left to botocore."""
_PLAIN_PROFILE_KEYS = frozenset({
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_security_token",
    "region", "output",
})
"""What a default profile may hold for its keys to be read here (anything else, such as
``role_arn``, ``sso_session``, ``credential_process`` or ``web_identity_token_file``, may
change where botocore's chain finds credentials)."""


def plain_credentials(
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str, str | None] | None:
    """The credentials botocore's default chain finds, when they are plain keys it finds
    in the environment or the default profile; None when only botocore can say.

    Read in botocore's order: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (with
    ``AWS_SESSION_TOKEN`` or ``AWS_SECURITY_TOKEN``), then the ``[default]`` section of the
    shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``, ``~/.aws/credentials``), then
    that of the config file (``AWS_CONFIG_FILE``, ``~/.aws/config``). None whenever botocore
    might do anything else: a profile chosen by ``AWS_PROFILE``, an expiring or partial set
    of variables, web identity, a default profile holding more than keys and region, a file
    that does not parse, or no keys in any of these places (container and instance
    credentials, or none at all).
    """
    import os

    env = os.environ if environ is None else environ
    if any(env.get(name) is not None for name in _ENV_OTHER_WAYS):
        return None
    files = []
    for variable, default in (("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
                              ("AWS_CONFIG_FILE", "~/.aws/config")):
        path = env.get(variable, default)
        if not path:
            return None
        path = os.path.expanduser(os.path.expandvars(path))  # as botocore expands it
        profile = _default_profile(path, config=variable == "AWS_CONFIG_FILE")
        if profile is None:
            return None
        files.append(profile)
    given = [env.get(name) for name in (*_ENV_KEYS, *_ENV_TOKENS)]
    if key := env.get("AWS_ACCESS_KEY_ID"):
        _, secret, session_token, security_token = given
        if not secret or session_token == "" or security_token == "" or (
                session_token is not None and security_token is not None):
            return None
        return key, secret, session_token if session_token is not None else security_token
    if any(value is not None for value in given):
        return None
    if set().union(*files) - _PLAIN_PROFILE_KEYS:
        return None
    for profile in files:
        if "aws_access_key_id" in profile:
            return _profile_keys(profile)
    return None


def _profile_keys(profile: Mapping[str, str]) -> tuple[str, str, str | None] | None:
    key, secret = profile.get("aws_access_key_id"), profile.get("aws_secret_access_key")
    tokens = [profile[name] for name in ("aws_session_token", "aws_security_token")
              if name in profile]
    if not key or not secret or len(tokens) > 1 or "" in tokens:
        return None
    return key, secret, tokens[0] if tokens else None


def _default_profile(path: str, config: bool) -> dict[str, str] | None:
    """The ``default`` profile's settings in the AWS file at ``path`` ({} when there is no
    file or no such profile), or None when botocore might read it otherwise."""
    import configparser

    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, configparser.Error):
        return None
    if parser.defaults() or (config and parser.has_section("profile default")):
        return None  # botocore merges the two spellings; leave that to it
    if not parser.has_section("default"):
        return {}
    settings = dict(parser.items("default"))
    if any("\n" in value for value in settings.values()):
        return None  # a nested section (``s3 =`` and indented lines)
    return settings
