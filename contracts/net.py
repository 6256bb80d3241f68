"""Free TCP ports on this machine: the one place that picks them, for the local runtime, the load test's local
Prometheus, the benchmarks and the tests (which bind 127.0.0.1 on a free port, ARCHITECTURE.md). In contracts, which
every step may import, and it imports nothing of ours."""
from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port on `host` that nothing listens on once this returns: the OS picked it free. Someone else may take it
    before the caller binds it, so callers that start a server retry with another (deploy.local's PORT_RETRIES)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
