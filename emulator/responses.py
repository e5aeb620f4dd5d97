"""Requests -> model calls -> JSON: the one place an error becomes an HTTP answer."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from emulator import urls
from emulator.errors import EmulatorError, InvalidParameterValue, RequestTooLarge, UnsupportedRoute
from emulator.models import ASYNC_LIMIT, SYNC_LIMIT, FunctionRegistry, InvokeResult

__all__ = ["REQUEST_LIMIT", "Request", "Response", "blocks", "body_limit", "error_response",
           "handle", "too_large"]

REQUEST_LIMIT = 70_167_211  # bytes of a CreateFunction request with its zip, as on AWS
_PARSED_AT_ONCE = 65536  # bytes of body at most that a request not blocking may carry


@dataclass
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    after: Callable[[], None] | None = None
    """Work the server must do once the response is sent (starting an accepted Event)."""
    later: Callable[[Callable[[Response], None]], None] | None = None
    """Set for a synchronous invoke, whose answer is not this one: the server must call
    ``later(reply)`` exactly once, and ``reply(answer)`` follows once the invocation has
    ended, from the runner's thread (at once if the emulator is stopping)."""


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return Response(status, json.dumps(obj).encode(), h)


def _params(req: Request) -> dict[str, Any]:
    if not req.body:
        return {}
    try:
        obj = json.loads(req.body)
    except RecursionError as exc:
        raise InvalidParameterValue("request body is JSON nested too deeply") from exc
    except ValueError as exc:
        raise InvalidParameterValue(f"request body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidParameterValue("request body is not a JSON object")
    return obj


def blocks(req: Request) -> bool:
    """Whether :func:`handle` may hold up its thread on ``req``: any request that writes the
    state directory (CreateFunction unpacks a zip, UpdateFunctionCode, DeleteFunction...)
    or carries more than 64 KiB of body to parse. An Invoke (a synchronous one is answered
    later: :attr:`Response.later`) and a read are handled without waiting for anything."""
    return len(req.body) > _PARSED_AT_ONCE or not (
        req.method == "GET" or _is_invoke(req.method, req.path))


def _is_invoke(method: str, target: str) -> bool:
    return method == "POST" and target.split("?", 1)[0].rstrip("/").endswith("/invocations")


def body_limit(method: str, target: str, headers: Mapping[str, str]) -> int:
    """The largest body :func:`handle` takes for this request (``headers`` in lower case):
    an Invoke's payload limit, or ``REQUEST_LIMIT``. The server refuses a larger one with
    :func:`too_large` before reading it."""
    if _is_invoke(method, target):
        event = headers.get("x-amz-invocation-type") == "Event"
        return ASYNC_LIMIT if event else SYNC_LIMIT
    return REQUEST_LIMIT


def too_large(length: int, limit: int) -> Response:
    """The 413 for a body of ``length`` bytes above ``limit``."""
    return error_response(RequestTooLarge(
        f"{length} byte request body is above the limit of {limit} bytes for this operation"))


def error_response(err: EmulatorError) -> Response:
    """``err`` as AWS answers it."""
    return _error(err.status, err.aws_type, err.message, err.reason)


def handle(registry: FunctionRegistry, req: Request) -> Response:
    """Answer one request."""
    try:
        path = req.path.split("?", 1)[0]
        found = urls.match(req.method, path)
        if found is None:
            raise UnsupportedRoute(req.method, path)
        name, args = found
        args = {k: unquote(v) for k, v in args.items()}
        response: Response = _HANDLERS[name](registry, req, **args)
        return response
    except EmulatorError as err:
        return error_response(err)
    except Exception as exc:  # a bug of ours: answer as AWS does, rather than hang up
        return _error(500, "ServiceException", f"emulator error: {exc!r}", None, "Service")


def _error(
    status: int, aws_type: str, message: str, reason: str | None, kind: str = "User"
) -> Response:
    """An AWS JSON error: ``x-amzn-ErrorType`` names the exception boto3 raises."""
    body: dict[str, Any] = {"Type": kind, "Message": message, "message": message}
    if reason:
        body["Reason"] = reason
    return _json(status, body, {"x-amzn-ErrorType": aws_type})


def create_function(reg: FunctionRegistry, req: Request) -> Response:
    params = _params(req)
    fn = reg.create(params)
    if params.get("Publish"):
        return _json(201, reg.publish(fn.FunctionName))
    return _json(201, fn.configuration(reg.region))


def list_functions(reg: FunctionRegistry, req: Request) -> Response:
    return _json(200, {"Functions": [f.configuration(reg.region) for f in reg.list()]})


def get_function(reg: FunctionRegistry, req: Request, name: str) -> Response:
    fn = reg.get(name)
    return _json(200, {
        "Configuration": fn.configuration(reg.region),
        "Code": {"RepositoryType": "S3", "Location": f"file://{fn.code_dir}"},
    })


def delete_function(reg: FunctionRegistry, req: Request, name: str) -> Response:
    reg.delete(name)
    return Response(204)


def get_configuration(reg: FunctionRegistry, req: Request, name: str) -> Response:
    return _json(200, reg.get(name).configuration(reg.region))


def update_code(reg: FunctionRegistry, req: Request, name: str) -> Response:
    return _json(200, reg.update_code(name, _params(req)).configuration(reg.region))


def update_configuration(reg: FunctionRegistry, req: Request, name: str) -> Response:
    return _json(200, reg.update_configuration(name, _params(req)).configuration(reg.region))


def publish_version(reg: FunctionRegistry, req: Request, name: str) -> Response:
    return _json(201, reg.publish(name))


def put_invoke_config(reg: FunctionRegistry, req: Request, name: str) -> Response:
    return _json(200, reg.put_event_invoke_config(name, _params(req)))


def get_invoke_config(reg: FunctionRegistry, req: Request, name: str) -> Response:
    return _json(200, reg.get_event_invoke_config(name))


def invoke(reg: FunctionRegistry, req: Request, name: str) -> Response:
    kind = req.headers.get("x-amz-invocation-type", "RequestResponse")
    tail = req.headers.get("x-amz-log-type", "None") == "Tail"
    result = reg.invoke(name, req.body, kind, tail)
    run = result.run
    if run is not None:
        return Response(0, later=lambda reply: run(lambda ended: reply(_invoked(ended))))
    return _invoked(result)


def _invoked(result: InvokeResult) -> Response:
    """What Invoke answers for ``result``."""
    out = {"x-amzn-RequestId": result.request_id, "X-Amz-Executed-Version": "$LATEST"}
    if result.function_error:
        out["X-Amz-Function-Error"] = result.function_error
    if result.log_tail is not None:
        out["X-Amz-Log-Result"] = result.log_tail.decode()
    if result.status != 200:
        return Response(result.status, b"", out, after=result.start)
    out["Content-Type"] = "application/json"
    return Response(200, result.payload, out)


_HANDLERS: dict[str, Any] = {
    "create_function": create_function,
    "list_functions": list_functions,
    "get_function": get_function,
    "delete_function": delete_function,
    "get_configuration": get_configuration,
    "update_code": update_code,
    "publish_version": publish_version,
    "update_configuration": update_configuration,
    "put_invoke_config": put_invoke_config,
    "get_invoke_config": get_invoke_config,
    "invoke": invoke,
}
