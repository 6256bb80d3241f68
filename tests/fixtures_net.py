"""Network helpers shared by the tests (a module, not a test file, so test files import it rather than each other)."""
from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Type

from contracts.net import HOST, free_port  # the one free-port picker, shared with the local runtime and the benchmarks

__all__ = ["free_port", "serve_stub"]


@contextlib.contextmanager
def serve_stub(handler: Type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering with `handler`, in a thread; yields its base URL."""
    server = ThreadingHTTPServer((HOST, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
