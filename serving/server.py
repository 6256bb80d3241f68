"""Running the app under uvicorn, with a drain on SIGTERM/SIGINT.

On the first signal the server turns not-ready and answers new inference requests 503 at once, but keeps its
socket open while the requests already accepted (queued or running) finish; then uvicorn's graceful shutdown
closes the connections, with whatever is left of GRACE_SECONDS as its timeout. The process then exits 0.
A second SIGINT forces the exit.
"""
from __future__ import annotations

import importlib.util
import logging
import signal
import time
from types import FrameType
from typing import Optional, Tuple

import uvicorn

from serving import json_codec
from serving.app import ServerState, create_app
from serving.config import Settings

log = logging.getLogger("serving.server")

# Of GRACE_SECONDS, what uvicorn's own shutdown keeps at least (closing connections, lifespan shutdown).
SHUTDOWN_RESERVE_S = 1.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, grace_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.grace_s = grace_s
        self.signalled_at: Optional[float] = None

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        # Not recorded for re-raising (uvicorn re-raises captured signals after serving): a drained exit is exit 0.
        if self.signalled_at is not None:
            if sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        self.signalled_at = time.monotonic()
        log.info("received %s: draining", signal.Signals(sig).name)
        self.state.begin_shutdown()

    async def on_tick(self, counter: int) -> bool:
        if self.signalled_at is not None and not self.should_exit:
            elapsed = time.monotonic() - self.signalled_at
            drain_budget = max(0.0, self.grace_s - SHUTDOWN_RESERVE_S)
            if self.state.inflight == 0 or elapsed >= drain_budget:
                if self.state.inflight:
                    log.warning("grace period nearly over: closing with %d request(s) still in flight", self.state.inflight)
                self.config.timeout_graceful_shutdown = max(0.5, self.grace_s - elapsed)
                self.should_exit = True
        return await super().on_tick(counter)


def loop_and_http() -> Tuple[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools (requirements.txt pins both; the server measured
    less event-loop CPU a request with them, README "Serving benchmark"), else asyncio and h11 with a log line, so
    an image or environment without them still serves."""
    missing = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name) is None]
    loop = "asyncio" if "uvloop" in missing else "uvloop"
    http = "h11" if "httptools" in missing else "httptools"
    if missing:
        log.warning("serving on %s and %s, which cost more CPU a request: %s not installed (pip install %s)", loop, http,
                    " and ".join(missing), " ".join(missing))
    return loop, http


def serve(settings: Settings) -> int:
    """Run the server until it is signalled; 0 after a clean drain."""
    app = create_app(settings)
    loop, http = loop_and_http()
    log.info("event loop %s, HTTP %s, JSON %s", loop, http, json_codec.describe())
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", log_config=None,
                            access_log=settings.access_log, server_header=False, timeout_graceful_shutdown=settings.grace_seconds,
                            backlog=2048, loop=loop, http=http)
    server = DrainingServer(config, app.state.serving, settings.grace_seconds)
    server.run()
    return 0 if server.started else 1
