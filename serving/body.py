"""Reading a request's raw body within MAX_BODY_BYTES, and its deadline.

Both protocols read the raw body themselves: tritonclient sends no Content-Type, and the binary tensor extension
puts raw bytes after the JSON header. A body over the limit is read to its end (up to DRAIN_BYTES) and discarded
before the 413 goes out, so the client, still sending, reads the answer instead of a reset connection.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Dict, Optional

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from serving.errors import BodyTooLarge, UnsupportedEncoding

DEADLINE_KEY = "modelfleet.deadline"
DRAIN_BYTES = 64 * 1024 * 1024


def too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is larger than MAX_BODY_BYTES ({limit} bytes): send fewer or shorter inputs per "
                        "request (or raise MAX_BODY_BYTES)")


def header(scope: Scope, name: bytes) -> Optional[str]:
    """The value of request header `name` (lower-case bytes), or None; read from the ASGI scope, so no Request
    object (and its header mapping) is built on the inference path."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request's body, read straight from the ASGI receive channel; BodyTooLarge past `limit` bytes,
    UnsupportedEncoding for a compressed body, ClientDisconnect when the client goes away."""
    encoding = (header(scope, b"content-encoding") or "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")
    chunks = []
    size = 0
    over = False
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            over = True
            if size > DRAIN_BYTES:
                break
        elif chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if over:
        raise too_large(limit)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def drain(receive: Callable[[], Awaitable[Dict[str, Any]]], cap: int = DRAIN_BYTES) -> None:
    """Read and discard what is left of a request body (at most `cap` bytes)."""
    seen = 0
    while seen <= cap:
        message = await receive()
        if message.get("type") != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def deadline_of(scope: Scope, timeout_ms: float) -> float:
    """The request's deadline (time.monotonic()), set on arrival by the server's middleware."""
    deadline: Optional[float] = scope.get(DEADLINE_KEY)
    return deadline if deadline is not None else time.monotonic() + timeout_ms / 1000.0
