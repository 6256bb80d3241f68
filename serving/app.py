"""create_app(settings): the FastAPI app of one server: both protocols, probes, metrics, JSON errors, and the
bookkeeping that lets a SIGTERM drain it (readiness false at once, new requests 503, in-flight ones finish)."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, AsyncIterator, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import v1, v2
from serving.body import DEADLINE_KEY, drain, header, too_large
from serving.config import Settings
from serving.dataplane import SERVER_VERSION, DataPlane
from serving.endpoints import direct_endpoint, error_response, inference_path, internal_error_response
from serving.errors import ServingError, ShuttingDown
from serving.loader import ModelLoader
from serving.metrics import Metrics
from serving.repository import FAILED, LOADING, READY, ModelRepository

log = logging.getLogger("serving.app")

class ServerState:
    """What the probes, the middleware and the shutdown share."""

    def __init__(self, settings: Settings, repository: ModelRepository, loader: ModelLoader, plane: DataPlane,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.repository = repository
        self.loader = loader
        self.plane = plane
        self.metrics = metrics
        self.inflight = 0  # inference requests being handled (queued or running included)

    @property
    def shutting_down(self) -> bool:
        return self.plane.shutting_down

    def begin_shutdown(self) -> None:
        """Readiness false and new inference requests 503, at once; requests already in flight carry on."""
        if not self.shutting_down:
            log.info("shutting down: readiness is now false; %d request(s) in flight will finish", self.inflight)
        self.plane.shutting_down = True
        self.loader.stop()

    def update_model_gauges(self) -> None:
        counts = self.repository.counts()
        self.metrics.model_states(counts[READY], counts[FAILED], counts[LOADING])


class ServingMiddleware:
    """For inference requests: the deadline, the in-flight count, Content-Length against MAX_BODY_BYTES, 503 while
    shutting down, and the request metrics (status code and latency by model and protocol); then the protocol's
    endpoint itself, past FastAPI's router (serving/endpoints.py); other requests go on to FastAPI."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = inference_path(scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        protocol, model_id = found.protocol, found.model_id
        state, settings = self.state, self.state.settings
        started = time.monotonic()
        scope[DEADLINE_KEY] = started + settings.request_timeout_ms / 1000.0
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # Labelled as in the request metrics: an id not assigned here is "unknown", so labels stay bounded.
        label = model_id if model_id in state.repository else "unknown"
        state.inflight += 1
        state.metrics.request_started(label)
        arrival = state.plane.arrive(model_id)
        try:
            if state.shutting_down:
                await drain(receive)
                await error_response(ShuttingDown("the server is shutting down: send the request to another replica"))(
                    scope, receive, send_status)
                return
            length = _content_length(scope)
            if length is not None and length > settings.max_body_bytes:
                await drain(receive)
                await error_response(too_large(settings.max_body_bytes))(scope, receive, send_status)
                return
            await (direct_endpoint(state.plane, scope["method"], found) or self.app)(scope, receive, send_status)
        finally:
            state.plane.settle(arrival)
            state.inflight -= 1
            state.metrics.request_finished(label)
            state.metrics.request(label, protocol, status, time.monotonic() - started)


def _content_length(scope: Scope) -> Optional[int]:
    value = header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors()[:3]:
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path", "header")]
        problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(problems)


def create_app(settings: Settings) -> FastAPI:
    """The server's ASGI app. Its lifespan starts loading the models in the background and stops the batchers."""
    metrics = Metrics(settings.model_ids, settings.memory_budget_mib)
    holder: Dict[str, ServerState] = {}
    repository = ModelRepository(settings.model_ids, on_change=lambda: holder["state"].update_model_gauges(),
                                 on_fail=metrics.load_failed)
    loader = ModelLoader(settings, repository)
    plane = DataPlane(settings, repository, metrics)
    state = ServerState(settings, repository, loader, plane, metrics)
    holder["state"] = state

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        plane.start()
        state.update_model_gauges()
        log.info("server %s: %d model(s) from %s on %s; %d inference thread(s), batches of up to %d, memory budget %s",
                 settings.server_id, len(settings.model_ids), settings.store_uri, settings.processor, settings.workers,
                 settings.max_batch_size, settings.memory_budget_text)
        loader.start()
        try:
            yield
        finally:
            state.begin_shutdown()
            await plane.stop()

    app = FastAPI(title="modelfleet model server", version=SERVER_VERSION, lifespan=lifespan, docs_url="/docs",
                  description="Serves the models assigned to this pod: /predictions (the reference design's API) and the "
                              "KServe v2 / Open Inference Protocol (with Triton's binary tensor extension).")
    app.state.serving = state

    @app.exception_handler(ServingError)
    async def _serving_error(_request: Request, exc: ServingError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}: see /docs for the API"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}: see /docs for the API"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(exc)

    @app.get("/healthz", tags=["probes"], summary="Liveness: the process answers")
    async def healthz() -> Dict[str, Any]:
        return {"status": "alive", "server_id": settings.server_id}

    @app.get("/readyz", tags=["probes"], summary="Readiness: 200 once loading is over and a model serves; 503 before, "
                                                  "and after SIGTERM")
    async def readyz() -> JSONResponse:
        ok, body = plane.readiness()
        return JSONResponse({"ready": ok, **body}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.include_router(v1.create_router(plane))
    app.include_router(v2.create_router(plane))
    app.add_middleware(ServingMiddleware, state=state)
    return app
