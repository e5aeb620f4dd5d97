"""Errors with the AWS shapes: status, ``x-amzn-ErrorType`` and message (and a reason)."""

from __future__ import annotations

__all__ = [
    "EmulatorError",
    "InvalidParameterValue",
    "RequestTooLarge",
    "ResourceConflict",
    "ResourceNotFound",
    "TooManyRequests",
    "UnsupportedRoute",
]


class EmulatorError(Exception):
    """An API error: HTTP ``status``, AWS error ``aws_type`` and ``message``."""

    def __init__(self, status: int, aws_type: str, message: str, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.aws_type = aws_type
        self.message = message
        self.reason = reason


class ResourceNotFound(EmulatorError):
    def __init__(self, message: str) -> None:
        super().__init__(404, "ResourceNotFoundException", message)


class InvalidParameterValue(EmulatorError):
    def __init__(self, message: str) -> None:
        super().__init__(400, "InvalidParameterValueException", message)


class ResourceConflict(EmulatorError):
    def __init__(self, message: str) -> None:
        super().__init__(409, "ResourceConflictException", message)


class RequestTooLarge(EmulatorError):
    def __init__(self, message: str) -> None:
        super().__init__(413, "RequestTooLargeException", message)


class TooManyRequests(EmulatorError):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(429, "TooManyRequestsException", message, reason)


class UnsupportedRoute(EmulatorError):
    def __init__(self, method: str, path: str) -> None:
        super().__init__(
            404, "UnrecognizedClientException",
            f"the emulator does not implement {method} {path}",
        )
