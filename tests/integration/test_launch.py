"""The fast Event launcher of backends.aws_lambda against a real HTTP server on loopback.

The server in this file plays a Lambda endpoint that throttles (429), fails (500) and drops
connections on a fixed schedule. Every request is byte-identical, so "no invocation lost or
doubled" is checked by counting what the server *accepted* (202 answers, each with its own
request id): it must equal N exactly, and match the launcher's report.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends.aws_lambda import LambdaLauncher, LaunchAborted
from mu.errors import LaunchError
from mu.launch import LaunchSpec


@dataclass
class Script:
    """What the fake endpoint does with the n-th request it receives (n from 1)."""

    throttle_every: int = 0  # answer 429 to every k-th request
    fail_every: int = 0  # answer 500 to every k-th request
    drop_every: int = 0  # close the connection without answering every k-th request
    missing: set[str] = field(default_factory=set)  # function names that do not exist
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    accepted_ids: list[str] = field(default_factory=list)
    answers: dict[int, int] = field(default_factory=dict)
    seen: int = 0
    auth: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeLambda

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        json.loads(body)
        script = self.server.script
        with script.lock:
            n = next(script.counter)
            script.seen += 1
            script.auth.add(self.headers.get("Authorization", "").split(" Signature=")[0])
            script.paths.add(self.path)
        name = self.path.split("/")[3]
        if script.drop_every and n % script.drop_every == 0:
            # Close without answering, the way HTTP servers do (a lingering close): the
            # answers already written still reach the client. A bare close with pipelined
            # requests unread sends a reset, which can destroy an answer the client has not
            # read yet; it then retries a request the server accepted, and counts double.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(10)
                while self.connection.recv(65536):
                    pass
            return
        if name in script.missing:
            self._answer(
                404,
                {"Type": "User", "message": f"Function not found: {name}"},
                "ResourceNotFoundException",
            )
        elif script.throttle_every and n % script.throttle_every == 0:
            self._answer(
                429,
                {
                    "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                    "message": "Rate exceeded",
                    "retryAfterSeconds": 0,
                },
                "TooManyRequestsException",
            )
        elif script.fail_every and n % script.fail_every == 0:
            self._answer(500, {"message": "internal"}, "ServiceException")
        else:
            request_id = str(uuid.uuid4())
            with script.lock:
                script.accepted_ids.append(request_id)
            self._answer(202, None, "", request_id)

    def _answer(self, status: int, doc: object, error: str, request_id: str = "") -> None:
        data = json.dumps(doc).encode() if doc is not None else b""
        with self.server.script.lock:
            self.server.script.answers[status] = self.server.script.answers.get(status, 0) + 1
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", request_id or str(uuid.uuid4()))
        if error:
            self.send_header("x-amzn-ErrorType", f"{error}:http://internal.amazon.com/")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


class FakeLambda(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: Script) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = script

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def serve(script: Script, tls: ssl.SSLContext | None = None) -> Iterator[FakeLambda]:
    server = FakeLambda(script)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


PAYLOAD = json.dumps({"addr": "127.0.0.1", "port": 1, "token": "t"}).encode()


def launcher_for(server: FakeLambda, **options: object) -> LambdaLauncher:
    settings: dict[str, object] = {
        "connections": 4,
        "backoff_base": 0.001,
        "backoff_cap": 0.01,
        "check_function": False,  # the fake endpoint only knows Invoke
    }
    settings.update(options)
    return LambdaLauncher(endpoint_url=server.url, **settings)  # type: ignore[arg-type]


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize("pipeline", [1, 4])
def test_all_accepted_once_despite_429_500_and_drops(pipeline: int) -> None:
    script = Script(throttle_every=3, fail_every=7, drop_every=11)
    for server in serve(script):
        launcher = launcher_for(server, pipeline=pipeline, max_attempts=20)
        n = 300
        report = launcher.launch(LaunchSpec("png2y4m_ab12cd34", PAYLOAD, n, ("us-east-1",)))
        launcher.close()
        assert report.accepted == n and report.failed == 0
        assert [i.index for i in report.invocations] == list(range(n))
        # exactly N accepted by the server, each with its own request id: none lost or doubled
        assert len(script.accepted_ids) == len(set(script.accepted_ids)) == n
        assert report.throttled == script.answers.get(429, 0) > 0
        assert script.answers.get(500, 0) > 0
        # every request the server saw is an attempt of some invocation (with pipelining, a
        # dropped connection also takes requests the server never read)
        attempts = sum(i.attempts for i in report.invocations)
        assert attempts == script.seen if pipeline == 1 else attempts >= script.seen
        assert all(i.status == 202 and i.done_at >= i.sent_at > 0 for i in report.invocations)
        assert launcher.last_stats["resent"] > 0
        assert script.paths == {"/2015-03-31/functions/png2y4m_ab12cd34/invocations"}
        (auth,) = script.auth
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=testing/")
        assert "/us-east-1/lambda/aws4_request" in auth


@pytest.mark.usefixtures("aws_env")
def test_regions_round_robin_and_summary() -> None:
    script = Script()
    for server in serve(script):
        launcher = launcher_for(server)
        spec = LaunchSpec("f", PAYLOAD, 10, ("us-east-1", "eu-west-1", "ap-south-1"))
        report = launcher.launch(spec)
        launcher.close()
        assert [i.region for i in report.invocations[:4]] == [
            "us-east-1",
            "eu-west-1",
            "ap-south-1",
            "us-east-1",
        ]
        assert report.by_region() == {
            "us-east-1": {"accepted": 4, "failed": 0, "throttled": 0},
            "eu-west-1": {"accepted": 3, "failed": 0, "throttled": 0},
            "ap-south-1": {"accepted": 3, "failed": 0, "throttled": 0},
        }
        assert len(script.auth) == 3  # one signature per region


@pytest.mark.usefixtures("aws_env")
def test_bounded_retries_report_failures() -> None:
    script = Script(throttle_every=1)  # always throttled
    for server in serve(script):
        launcher = launcher_for(server, max_attempts=3)
        report = launcher.launch(LaunchSpec("f", PAYLOAD, 5))
        launcher.close()
        assert report.accepted == 0 and report.failed == 5
        assert all(i.attempts == 3 and i.throttled == 3 for i in report.invocations)
        assert script.seen == 15
        error = report.invocations[0].error or ""
        assert "gave up after 3 attempts" in error and "TooManyRequestsException" in error


@pytest.mark.usefixtures("aws_env")
def test_unknown_function_aborts_naming_it() -> None:
    script = Script(missing={"no_such_fn"})
    for server in serve(script):
        launcher = launcher_for(server)
        with pytest.raises(LaunchAborted) as info:
            launcher.launch(LaunchSpec("no_such_fn", PAYLOAD, 50))
        launcher.close()
        message = str(info.value)
        assert "no_such_fn" in message and "ResourceNotFoundException" in message
        assert isinstance(info.value, LaunchError)
        assert info.value.report.accepted == 0
        assert len(info.value.report.invocations) == 50


@pytest.mark.usefixtures("aws_env")
def test_refused_connection_is_a_launch_error() -> None:
    script = Script()
    for server in serve(script):
        url = server.url
    launcher = LambdaLauncher(endpoint_url=url, connections=2, check_function=False)
    with pytest.raises(LaunchError, match="cannot connect"):
        launcher.launch(LaunchSpec("f", PAYLOAD, 3))
    launcher.close()


@pytest.mark.usefixtures("aws_env")
def test_zero_invocations() -> None:
    launcher = LambdaLauncher(endpoint_url="http://127.0.0.1:9")
    assert launcher.launch(LaunchSpec("f", PAYLOAD, 0)).invocations == ()


@pytest.mark.usefixtures("aws_env")
def test_https_endpoint(key_dir: Path) -> None:
    """The TLS path (non-blocking handshakes, certificate verification) against loopback."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(key_dir / "server_cert.pem", key_dir / "server_key.pem")
    script = Script(throttle_every=5)
    for server in serve(script, context):
        url = f"https://localhost:{server.server_address[1]}"
        launcher = LambdaLauncher(
            endpoint_url=url,
            verify=str(key_dir / "ca_cert.pem"),
            connections=3,
            backoff_base=0.001,
            check_function=False,
        )
        report = launcher.launch(LaunchSpec("f", PAYLOAD, 40))
        launcher.close()
        assert report.accepted == 40 == len(set(script.accepted_ids))
        assert report.throttled > 0

        untrusting = LambdaLauncher(endpoint_url=url, connections=1, check_function=False)
        with pytest.raises(LaunchError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.launch(LaunchSpec("f", PAYLOAD, 2))
        untrusting.close()
