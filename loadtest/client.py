"""A small asyncio HTTP/1.1 client with keep-alive connection pools: standard library only.

Why not aiohttp, httpx or locust: on a 2-core machine shared with the servers under test the client's own
CPU time is latency the servers did not cause. One event loop, no threads, and a parser that reads only the
status line, the headers it needs and the body's bytes keeps that cost to a few tenths of a millisecond per
request (the report states the measured figure: the client's CPU time per request). locust is also unsafe to
import after urllib3/boto3 in one process (NOTES.md).

What it handles: http and https, Content-Length and chunked bodies, bodies that end with the connection,
`Connection: close`, a stale keep-alive connection (retried once on a fresh one when nothing was read), and a
deadline per request. One pool per origin, at most `max_connections` connections each.
"""
from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not an HTTP/1.x response."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Tuple[Origin, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port), target

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True

    def close(self) -> None:
        self.reusable = False
        with contextlib.suppress(Exception):  # already broken: nothing to release
            self.writer.close()


class _Pool:
    def __init__(self, origin: Origin, max_connections: int, ssl_context: Optional[ssl.SSLContext]) -> None:
        self.origin = origin
        self.idle: List[_Connection] = []
        self.slots = asyncio.Semaphore(max_connections)
        self.ssl_context = ssl_context

    async def open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self.origin.host, self.origin.port, ssl=self.ssl_context if self.origin.scheme == "https" else None,
            limit=MAX_HEADER_BYTES)
        return _Connection(reader, writer)


class Client:
    """`await client.request("POST", url, body)`; use `async with Client() as client`. `headers` go on every request;
    a Host among them replaces the URL's (a gateway reached by address that routes by host name)."""

    def __init__(self, max_connections: int = 64, verify_tls: bool = True, headers: Optional[Dict[str, str]] = None) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be 1 or more, got {max_connections}")
        self.max_connections = max_connections
        self.headers = dict(headers or {})
        self._ssl = ssl.create_default_context()
        if not verify_tls:
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE
        self._pools: Dict[Origin, _Pool] = {}

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for pool in self._pools.values():
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()

    def _pool(self, origin: Origin) -> _Pool:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(origin, self.max_connections, self._ssl)
        return pool

    async def request(self, method: str, url: str, body: Optional[bytes] = None, content_type: str = "application/json",
                      timeout_s: float = 30.0) -> Response:
        """One request; raises asyncio.TimeoutError past `timeout_s` (waiting for a connection included),
        OSError when it cannot connect or the connection breaks, ProtocolError on a malformed response."""
        origin, target = Origin.of(url)
        return await asyncio.wait_for(self._request(origin, method, target, body, content_type), timeout_s)

    async def _request(self, origin: Origin, method: str, target: str, body: Optional[bytes], content_type: str) -> Response:
        pool = self._pool(origin)
        head = self._head(origin, method, target, body, content_type)
        async with pool.slots:
            while True:
                reused = bool(pool.idle)
                conn = pool.idle.pop() if reused else await pool.open()
                try:
                    response = await self._exchange(conn, head, body)
                except (OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
                    conn.close()
                    if reused and not getattr(exc, "started", False):
                        continue  # a keep-alive connection the server had closed: once more on a fresh one (or the next idle)
                    if isinstance(exc, asyncio.IncompleteReadError):
                        raise ProtocolError("the connection closed in the middle of the response") from None
                    raise
                except BaseException:  # cancelled (the deadline): the connection is in an unknown state
                    conn.close()
                    raise
                if conn.reusable:
                    pool.idle.append(conn)
                else:
                    conn.close()
                return response

    def _head(self, origin: Origin, method: str, target: str, body: Optional[bytes], content_type: str) -> bytes:
        host = next((v for k, v in self.headers.items() if k.lower() == "host"), origin.host_header)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Accept: */*"]
        if body is not None:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items() if k.lower() != "host"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _exchange(self, conn: _Connection, head: bytes, body: Optional[bytes]) -> Response:
        conn.writer.write(head + body if body else head)
        await conn.writer.drain()
        reader = conn.reader
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise ProtocolError(f"response headers longer than {MAX_HEADER_BYTES} bytes") from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                _mark_started(exc)
            raise
        try:
            status, headers, keep_alive = _parse_head(raw)
            body_bytes = await _read_body(reader, headers, status)
        except (OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
            _mark_started(exc)
            raise
        framed = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower() or status in (204, 304)
        conn.reusable = conn.reusable and keep_alive and framed  # a body that ended with the connection leaves nothing to reuse
        return Response(status, body_bytes)


def _mark_started(exc: BaseException) -> None:
    with contextlib.suppress(AttributeError):
        exc.started = True  # type: ignore[attr-defined]


def _parse_head(raw: bytes) -> Tuple[int, Dict[str, str], bool]:
    lines = raw.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if status_line[0] == "HTTP/1.1" else "keep-alive" in connection
    return int(status_line[1]), headers, keep_alive


async def _read_body(reader: asyncio.StreamReader, headers: Dict[str, str], status: int) -> bytes:
    if status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {size_line[:40]!r}") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the blank line
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = headers.get("content-length")
    if length is not None:
        try:
            return await reader.readexactly(int(length))
        except ValueError:
            raise ProtocolError(f"bad Content-Length {length!r}") from None
    return await reader.read()  # the body ends with the connection


def classify(exc: BaseException) -> str:
    """A short name for a failed request without a status: timeout, connect, protocol."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "connect"
    if isinstance(exc, OSError):
        return "connect"
    return type(exc).__name__


def now() -> float:
    """The clock every timestamp of a run uses."""
    return time.perf_counter()
