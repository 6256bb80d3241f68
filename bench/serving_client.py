"""A lean HTTP/1.1 load client for the serving benchmark: asyncio raw sockets, one keep-alive connection per
client, pre-built request bytes, a closed loop (each client sends its next request when the answer is in).

`run_load(host, port, request, clients, duration_s)` returns every request's latency (seconds) and the wall time;
percentiles are pooled over all requests. Also: a trivial canned-response server (`python -m bench.serving_client
PORT`) to measure the client's own round-trip floor over loopback.
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np


def build_request(method: str, path: str, body: bytes = b"", headers: Optional[dict] = None, host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> Tuple[int, bytes]:
    """(status, body) of one response (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts)
    return status, (await reader.readexactly(length)) if length > 0 else b""


@dataclass
class LoadResult:
    latencies: List[float] = field(default_factory=list)  # seconds, successful requests
    errors: dict = field(default_factory=dict)  # status (or exception name) -> count
    wall_s: float = 0.0
    answered: int = 0  # every answer, warm-up included (for CPU per request)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.count / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1000.0, q)) if self.latencies else float("nan")

    def summary(self) -> dict:
        return {"requests": self.count, "errors": dict(self.errors), "wall_s": round(self.wall_s, 3),
                "throughput_rps": round(self.throughput, 2), "p50_ms": round(self.pct(50), 3), "p90_ms": round(self.pct(90), 3),
                "p99_ms": round(self.pct(99), 3), "mean_ms": round(float(np.mean(self.latencies)) * 1000, 3) if self.latencies else None}


async def _run(host: str, port: int, request: bytes, clients: int, duration_s: float, max_requests: Optional[int],
               warmup_s: float, check: Optional[bytes]) -> LoadResult:
    conns = [await asyncio.open_connection(host, port) for _ in range(clients)]
    result = LoadResult()
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    first_done: List[float] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        perf = time.perf_counter
        while True:
            t0 = perf()
            if t0 >= stop_at or (max_requests is not None and result.count >= max_requests):
                return
            writer.write(request)
            status, body = await read_response(reader)
            t1 = perf()
            result.answered += 1
            if status != 200 or (check is not None and check not in body):
                key = str(status)
                result.errors[key] = result.errors.get(key, 0) + 1
                if status != 200:
                    await asyncio.sleep(0.01)
                continue
            if t0 >= measure_from:
                if not first_done:
                    first_done.append(t0)
                result.latencies.append(t1 - t0)

    await asyncio.gather(*(client(r, w) for r, w in conns))
    end = time.perf_counter()
    result.wall_s = end - max(measure_from, start)
    for _, writer in conns:
        writer.close()
    return result


def run_load(host: str, port: int, request: bytes, clients: int = 1, duration_s: float = 5.0, max_requests: Optional[int] = None,
             warmup_s: float = 0.0, check: Optional[bytes] = None) -> LoadResult:
    """A closed loop of `clients` connections for `duration_s` (or until `max_requests` answers) after `warmup_s`."""
    return asyncio.run(_run(host, port, request, clients, duration_s, max_requests, warmup_s, check))


# ---- a canned-response server: the client's own floor over loopback ----
CANNED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _canned(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                writer.write(CANNED)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_canned(int(sys.argv[1])))
