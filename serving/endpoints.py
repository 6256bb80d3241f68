"""The inference endpoints as the server's middleware calls them: straight after its bookkeeping, past FastAPI.

An inference request's path already names its protocol and model, so routing it through FastAPI's middleware
stack, router and dependency injection only spends event-loop time: py-spy put that at about a fifth of the
event loop's CPU a request (README, "Serving benchmark"). `direct_endpoint` picks the handler for the methods
and paths that the protocols serve (POST or GET /predictions/{id}, POST /v2/models/{id}[/versions/{v}]/infer);
anything else (another method, a trailing slash) goes on to FastAPI, which answers it as before (405, redirect).
The HTTP contract is the same either way: the same handlers (v1.predictions, v2.infer), the same JSON errors.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from serving import v1, v2
from serving.dataplane import DataPlane
from serving.errors import ServingError

log = logging.getLogger("serving.endpoints")

# The protocols' inference paths; a trailing slash is still an inference request (the middleware counts it and
# applies its limits) but FastAPI answers it, as it answers every path it routes itself.
V1_PATH = re.compile(r"^/predictions/([^/]+)(/?)$")
V2_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer(/?)$")

Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class InferencePath:
    """What an inference request's path names: its protocol, model and (v2) version."""

    protocol: str  # "v1" or "v2", as the request metrics label it
    model_id: str
    version: Optional[str]
    trailing_slash: bool


def inference_path(path: str) -> Optional[InferencePath]:
    """The inference request this path names, or None for any other path (probes, metadata, /docs)."""
    match = V1_PATH.match(path)
    if match:
        return InferencePath("v1", match.group(1), None, bool(match.group(2)))
    match = V2_PATH.match(path)
    if match:
        return InferencePath("v2", match.group(1), match.group(2), bool(match.group(3)))
    return None


def error_response(error: ServingError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers or None)


def internal_error_response(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def direct_endpoint(plane: DataPlane, method: str, found: InferencePath) -> Optional[Endpoint]:
    """The ASGI handler answering this inference request, or None to leave it to FastAPI (another method, or a
    trailing slash)."""
    if found.trailing_slash:
        return None
    if found.protocol == "v1" and method in ("POST", "GET"):
        async def predictions(scope: Scope, receive: Receive, send: Send) -> None:
            await _answer(v1.predictions(plane, found.model_id, scope, receive), scope, receive, send)

        return predictions
    if found.protocol == "v2" and method == "POST":
        async def infer(scope: Scope, receive: Receive, send: Send) -> None:
            await _answer(v2.infer(plane, found.model_id, found.version, scope, receive), scope, receive, send)

        return infer
    return None


async def _answer(handling: Awaitable[Response], scope: Scope, receive: Receive, send: Send) -> None:
    """Send the handler's response, or the JSON error FastAPI's exception handlers would have sent."""
    try:
        response = await handling
    except ServingError as exc:
        response = error_response(exc)
    except ClientDisconnect:  # nobody is left to answer
        return
    except Exception as exc:
        log.exception("inference request %s %s failed", scope["method"], scope["path"])
        response = internal_error_response(exc)
    await response(scope, receive, send)
