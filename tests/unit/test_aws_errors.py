"""mu.aws.translate: each kind of botocore failure becomes one line of mu's error tree."""

from __future__ import annotations

import boto3.exceptions
import botocore.exceptions as bx
import pytest

from mu.aws import aws_errors, translate
from mu.errors import ConfigError, LaunchError, MuError, map_exceptions

URL = "http://127.0.0.1:9/b"


def client_error(code: str, status: int, message: str = "msg") -> bx.ClientError:
    return bx.ClientError(
        {"Error": {"Code": code, "Message": message},
         "ResponseMetadata": {"HTTPStatusCode": status}},
        "HeadBucket",
    )


@pytest.mark.parametrize(
    ("exc", "kind", "says"),
    [
        (bx.ProfileNotFound(profile="nope"), ConfigError, "AWS profile 'nope' (AWS_PROFILE)"),
        (bx.NoCredentialsError(), ConfigError, "no usable AWS credentials"),
        (bx.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
         ConfigError, "AWS_SECRET_ACCESS_KEY"),
        (bx.NoRegionError(), ConfigError, "no AWS region"),
        (bx.EndpointConnectionError(endpoint_url=URL), LaunchError, f"cannot connect to {URL}"),
        (bx.ConnectTimeoutError(endpoint_url=URL), LaunchError, f"timed out connecting to {URL}"),
        (bx.ReadTimeoutError(endpoint_url=URL), LaunchError, f"timed out waiting for {URL}"),
        (bx.ConnectionClosedError(endpoint_url=URL), LaunchError, "connection closed"),
        (client_error("AccessDenied", 403), ConfigError, "access denied (AccessDenied: msg)"),
        (client_error("InvalidAccessKeyId", 403), ConfigError, "check the credentials"),
        (client_error("NoSuchBucket", 404), ConfigError, "does not exist (NoSuchBucket: msg)"),
        (client_error("ResourceNotFoundException", 404), ConfigError, "does not exist"),
        (client_error("ThrottlingException", 400), LaunchError, "throttled by AWS after retries"),
        (client_error("SlowDown", 503), LaunchError, "throttled"),
        (client_error("InternalError", 500), LaunchError, "service failed (HTTP 500"),
        (client_error("Weird", 400), LaunchError, "Weird: msg"),
        (boto3.exceptions.S3UploadFailedError("boom"), LaunchError, "S3UploadFailedError: boom"),
    ],
)
def test_translate(exc: Exception, kind: type[MuError], says: str) -> None:
    with pytest.raises(kind) as info, aws_errors("S3 look up bucket 'b' at http://x"):
        raise exc
    text = str(info.value)
    assert type(info.value) is kind
    assert text.startswith("S3 look up bucket 'b' at http://x: ")
    assert says in text
    assert "\n" not in text
    assert info.value.__cause__ is exc


def test_a_message_with_newlines_becomes_one_line() -> None:
    error = translate(client_error("Weird", 400, "first line\n  second line"), "x")
    assert str(error) == "x: Weird: first line second line"


def test_translate_without_where() -> None:
    assert str(translate(bx.NoRegionError())).startswith("no AWS region")


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), aws_errors("x"):
        raise KeyError("not ours to translate")


def test_map_exceptions_takes_a_translator() -> None:
    def words(exc: BaseException, where: str) -> Exception:
        return LaunchError(f"{where} said {exc}")

    with pytest.raises(LaunchError, match=r"^dial said refused$"), map_exceptions(
        {ConnectionRefusedError: words}, "dial"
    ):
        raise ConnectionRefusedError("refused")
