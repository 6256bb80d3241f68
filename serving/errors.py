"""The errors a request can meet, each with its HTTP status and a message that says what to fix."""
from __future__ import annotations

from typing import Dict, Optional


class ServingError(Exception):
    """An error answered as JSON {"error": message} with `status` (and extra headers)."""

    status = 500

    def __init__(self, message: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class ModelNotFound(ServingError):
    status = 404


class InvalidInput(ServingError):
    """422: the message starts with the field at fault (`inputs[0].shape: ...`)."""

    status = 422

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class BodyTooLarge(ServingError):
    status = 413


class UnsupportedEncoding(ServingError):
    status = 415


class QueueFull(ServingError):
    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, {"Retry-After": str(int(retry_after_s))})
        self.retry_after_s = int(retry_after_s)


class ModelNotReady(ServingError):
    status = 503


class ShuttingDown(ServingError):
    status = 503


class DeadlineExceeded(ServingError):
    status = 504


class InferenceFailed(ServingError):
    status = 500
