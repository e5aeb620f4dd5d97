"""The backend table and the pieces of backends.aws_lambda that need no server."""

from __future__ import annotations

import json

import botocore.exceptions
import pytest

from backends import BACKENDS, get_backend
from backends.aws_lambda import (
    LambdaLauncher,
    _error_code,
    _Incomplete,
    _parse_response,
    aws_errors,
    code_sha256,
    route_address,
)
from mu.errors import ConfigError, LaunchError, MuError, map_exceptions
from mu.options import SiteOptions


def test_table_names() -> None:
    assert set(BACKENDS) == {"lambda", "local", "none"}


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown backend 'fargate' \(choices: lambda, local, none\)"
    ):
        get_backend("fargate")


def test_site_options_reach_the_launcher() -> None:
    site = get_backend("lambda", SiteOptions(endpoint_url="http://127.0.0.1:9",
                                             code_bucket="big-zips"))
    try:
        launcher = site.launcher
        assert site.name == launcher.name == "lambda"
        assert isinstance(launcher, LambdaLauncher) and launcher.code_bucket == "big-zips"
        assert launcher.endpoint_url == "http://127.0.0.1:9"
        assert site.max_zipped is None  # big bundles go through the code bucket
    finally:
        site.close()


def test_the_lambda_site_dials_back_on_the_route_to_its_endpoint() -> None:
    site = get_backend("lambda", SiteOptions(endpoint_url="http://127.0.0.1:5000"))
    assert site.dial_back_address("us-east-1") == "127.0.0.1"
    told = get_backend("lambda", SiteOptions(endpoint_url="http://127.0.0.1:5000",
                                             host_addr="10.1.2.3"))
    assert told.dial_back_address("us-east-1") == "10.1.2.3"
    with pytest.raises(ConfigError, match="--host-addr"):
        get_backend("lambda", SiteOptions(endpoint_url="http://no-such-host.invalid:1")
                    ).dial_back_address("us-east-1")


def test_bad_launcher_settings() -> None:
    with pytest.raises(ConfigError, match="connections"):
        LambdaLauncher(connections=0)


def test_map_exceptions_most_specific_wins() -> None:
    mapping: dict[type[BaseException], type[Exception]] = {
        OSError: MuError,
        TimeoutError: LaunchError,
    }
    with pytest.raises(LaunchError) as info, map_exceptions(mapping):
        raise TimeoutError("slow")
    assert isinstance(info.value.__cause__, TimeoutError)
    with pytest.raises(MuError) as other, map_exceptions(mapping):
        raise ConnectionResetError("reset")
    assert type(other.value) is MuError
    with pytest.raises(KeyError), map_exceptions(mapping):
        raise KeyError("unmapped")


def test_aws_errors_names_code_and_message() -> None:
    error = botocore.exceptions.ClientError(
        {"Error": {"Code": "AccessDeniedException", "Message": "no way"}}, "CreateFunction"
    )
    with pytest.raises(ConfigError) as info, aws_errors("create function", "f_1", "eu-west-1"):
        raise error
    assert str(info.value) == (
        "create function f_1 in eu-west-1: access denied (AccessDeniedException: no way): "
        "check the credentials and that they may do this"
    )
    assert info.value.__cause__ is error
    with pytest.raises(ConfigError, match=r"^x f in r: no usable AWS credentials"), aws_errors(
        "x", "f", "r"
    ):
        raise botocore.exceptions.NoCredentialsError()


def test_code_sha256_matches_lambda_format() -> None:
    assert code_sha256(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_unknown_region_only_checked_for_aws() -> None:
    with pytest.raises(ConfigError, match="unknown region 'mars-1'"):
        LambdaLauncher().check_region("mars-1")
    LambdaLauncher(endpoint_url="http://127.0.0.1:9").check_region("mars-1")


def test_route_address_for_loopback_endpoint() -> None:
    assert route_address("us-east-1", "http://127.0.0.1:5000") == "127.0.0.1"


def test_route_address_unresolvable() -> None:
    with pytest.raises(ConfigError, match="--host-addr"):
        route_address("us-east-1", "http://no-such-host.invalid:1")


def test_parse_response_content_length_and_pipelined() -> None:
    raw = bytearray(
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nX-Amzn-RequestId: a\r\n\r\n"
        b"HTTP/1.1 429 Too Many\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}"
    )
    first, used = _parse_response(raw)
    assert (first.status, first.body, first.close) == (202, b"", False)
    assert first.headers["x-amzn-requestid"] == "a"
    del raw[:used]
    second, used = _parse_response(raw)
    assert (second.status, second.body, second.close, used) == (429, b"{}", True, len(raw))


def test_parse_response_chunked_and_incomplete() -> None:
    raw = bytearray(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    response, used = _parse_response(raw)
    assert (response.status, response.body, used) == (500, b"abc", len(raw))
    for cut in range(len(raw)):
        with pytest.raises(_Incomplete):
            _parse_response(bytearray(raw[:cut]))


def test_parse_response_rejects_garbage() -> None:
    with pytest.raises(LaunchError, match="malformed HTTP status line"):
        _parse_response(bytearray(b"SSH-2.0-OpenSSH\r\n\r\n"))


def test_error_code_from_headers_and_body() -> None:
    body = json.dumps({"Type": "User", "message": "Rate exceeded", "retryAfterSeconds": 2})
    code, message, retry = _error_code(
        {"x-amzn-errortype": "TooManyRequestsException:http://internal"}, body.encode()
    )
    assert (code, message, retry) == ("TooManyRequestsException", "Rate exceeded", 2.0)
    code, message, retry = _error_code({"retry-after": "1.5"}, b"not json")
    assert (code, message, retry) == ("", "not json", 1.5)
