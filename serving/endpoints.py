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
from typing import Awaitable, Callable, Optional

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from serving import v1, v2
from serving.dataplane import DataPlane
from serving.errors import ServingError

log = logging.getLogger("serving.endpoints")

V1_PATH = re.compile(r"^/predictions/([^/]+)$")
V2_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")

Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_response(error: ServingError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers or None)


def internal_error_response(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def direct_endpoint(plane: DataPlane, scope: Scope) -> Optional[Endpoint]:
    """The ASGI handler answering this inference request, or None to leave it to FastAPI."""
    method, path = scope["method"], scope["path"]
    if method == "POST" or method == "GET":
        match = V1_PATH.match(path)
        if match:
            model_id = match.group(1)

            async def predictions(scope: Scope, receive: Receive, send: Send) -> None:
                await _answer(v1.predictions(plane, model_id, scope, receive), scope, receive, send)

            return predictions
    if method == "POST":
        match = V2_PATH.match(path)
        if match:
            model_id, version = match.group(1), match.group(2)

            async def infer(scope: Scope, receive: Receive, send: Send) -> None:
                await _answer(v2.infer(plane, model_id, version, scope, receive), scope, receive, send)

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
