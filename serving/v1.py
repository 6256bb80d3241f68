"""The reference design's API: POST /predictions/{model_id} with {"inputs": ..., "context": ...}, and GET with
seq_0 / seq_1 query parameters (ARCHITECTURE.md, "Serving API").

This module decodes the body and encodes the answer; the data plane (serving/dataplane.py) checks the model and
the inputs and runs them, as in KServe's v1 endpoints. `predictions` is the endpoint itself, on the raw ASGI scope:
the server's middleware calls it straight after its bookkeeping (serving/endpoints.py), past FastAPI's routing;
the FastAPI routes below describe it in /docs and call the same function.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.types import Receive, Scope

from serving import json_codec
from serving.body import deadline_of, read_body
from serving.dataplane import DataPlane
from serving.errors import InvalidInput

FIELDS = ("inputs", "context")
IGNORED = ("parameters",)


class PredictionRequest(BaseModel):
    """The POST body (documentation; the handler reads the raw body and names the field at fault)."""

    inputs: Union[str, List[str]] = Field(description="a text or a list of texts (for question answering: the question(s))")
    context: Optional[Union[str, List[str]]] = Field(
        default=None, description="second text(s) of a pair: one for all inputs or one per input; for question answering "
                                  "the context to search (required)")


class Answer(BaseModel):
    text: str
    start: int = Field(description="character offset of the answer in the context")
    end: int
    score: float


class PredictionResponse(BaseModel):
    """One of: embeddings (feature-extraction), labels + scores (sequence-classification), answers (question-answering)."""

    model: str
    embeddings: Optional[List[List[float]]] = Field(default=None, description="attention-mask mean of the last hidden state")
    labels: Optional[List[str]] = None
    scores: Optional[List[float]] = None
    answers: Optional[List[Answer]] = None


def parse_prediction(body: bytes) -> Tuple[List[str], Optional[List[str]]]:
    """(texts, contexts) from a POST body; InvalidInput naming the field at fault."""
    try:
        data = json_codec.loads(body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidInput("body", f"not valid JSON ({exc}): send a JSON object such as {{\"inputs\": [\"a text\"]}}") from None
    if not isinstance(data, dict):
        raise InvalidInput("body", f"must be a JSON object such as {{\"inputs\": [\"a text\"]}}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS) - set(IGNORED))
    if unknown:
        raise InvalidInput(unknown[0], "unknown field: the body takes inputs and context")
    if "inputs" not in data:
        raise InvalidInput("inputs", "required: a text, or a list of texts")
    texts = _texts(data["inputs"], "inputs")
    contexts = None if data.get("context") is None else _texts(data["context"], "context")
    return texts, contexts


def _texts(value: Any, field: str) -> List[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InvalidInput(field, f"must be a string or a list of strings, got {type(value).__name__}")
    if not value:
        raise InvalidInput(field, "give at least one text")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInput(f"{field}[{index}]", f"must be a string, got {type(item).__name__}")
    return value


def _request_body_doc() -> Any:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": PredictionRequest.model_json_schema()}}}}


async def predictions(plane: DataPlane, model_id: str, scope: Scope, receive: Receive) -> Response:
    """POST (JSON body) or GET (seq_0, seq_1) /predictions/{model_id}: the answer, or a ServingError."""
    settings = plane.settings
    record = plane.ready_model(model_id)  # 404 or 503 before the body is read
    deadline = deadline_of(scope, settings.request_timeout_ms)
    if scope["method"] == "GET":
        query = QueryParams(scope.get("query_string", b""))
        seq_0, seq_1 = query.get("seq_0"), query.get("seq_1")
        if seq_0 is None:
            raise InvalidInput("seq_0", "required query parameter: the text (and seq_1: a second text or the context)")
        result = await plane.predict(record, [seq_0], None if seq_1 is None else [seq_1], deadline, fields=("seq_0", "seq_1"))
    else:
        texts, contexts = parse_prediction(await read_body(scope, receive, settings.max_body_bytes))
        result = await plane.predict(record, texts, contexts, deadline)
    return Response(json_codec.dumps(result), media_type="application/json")


def create_router(plane: DataPlane) -> APIRouter:
    """The routes for /docs; requests to them reach `predictions` through the server's middleware, and through
    these handlers only where the middleware passes a request on."""
    router = APIRouter(tags=["predictions"])

    @router.post("/predictions/{model_id}", response_model=PredictionResponse, openapi_extra=_request_body_doc(),
                 summary="Predict with a model (POST JSON)")
    async def predict_post(model_id: str, request: Request) -> Response:
        return await predictions(plane, model_id, request.scope, request.receive)

    @router.get("/predictions/{model_id}", response_model=PredictionResponse, summary="Predict with a model (query string)")
    async def predict_get(model_id: str, request: Request,
                          seq_0: Optional[str] = Query(None, description="the text (question answering: the question)"),
                          seq_1: Optional[str] = Query(None, description="the second text (question answering: the context)"),
                          ) -> Response:
        return await predictions(plane, model_id, request.scope, request.receive)

    return router
