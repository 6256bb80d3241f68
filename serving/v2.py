"""KServe v2 / Open Inference Protocol over HTTP, with Triton's binary tensor extension.

Inputs: input_ids and attention_mask (INT64 or INT32, [batch, sequence]; attention_mask defaults to ones), or text
(BYTES, [batch]) with an optional text_pair (or context) (BYTES, [batch]). Outputs: embedding (FP32 [batch, hidden]),
logits (FP32 [batch, labels]), or start_logits + end_logits (FP32 [batch, sequence]).

Binary extension: the JSON header is the first Inference-Header-Content-Length bytes of the body; an input with
parameters.binary_data_size takes that many bytes of what follows, in input order (BYTES elements are each a 4-byte
little-endian length and the bytes). An output is returned binary when it asks for parameters.binary_data, or when
the request's parameters.binary_data_output is true; the response then carries the same header and a binary tail.

This module decodes and encodes only: which inputs go together, model metadata and readiness are the data
plane's (serving/dataplane.py), as in KServe's v2 endpoints. `infer` is the inference endpoint on the raw ASGI
scope: the server's middleware calls it straight after its bookkeeping (serving/endpoints.py), past FastAPI's
routing; the FastAPI route describes it in /docs and calls the same function.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope

from serving import json_codec
from serving.body import deadline_of, header, read_body
from serving.dataplane import MODEL_VERSION, TEXT_INPUTS, TOKEN_INPUTS, DataPlane, InferInput
from serving.errors import InvalidInput

HEADER = "Inference-Header-Content-Length"
HEADER_KEY = HEADER.lower().encode("latin-1")  # as ASGI gives header names
INT_TYPES = {"INT64": np.dtype("<i8"), "INT32": np.dtype("<i4")}


@dataclass
class InferRequest:
    id: Optional[str]
    inputs: Dict[str, InferInput]
    outputs: Optional[List[Tuple[str, Optional[bool]]]]  # requested (name, binary or None: the request's default); None: all
    binary_output: bool


def parse_infer_request(body: bytes, header_length: Optional[str]) -> InferRequest:
    """The request's tensors; InvalidInput naming the field at fault."""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise InvalidInput(HEADER, f"must be the JSON header's length, 0..{len(body)} (the body's length), got {header_length!r}")
        head, tail = body[:size], body[size:]
    else:
        head, tail = body, b""
    try:
        data = json_codec.loads(head)
    except ValueError as exc:  # UnicodeDecodeError included
        hint = "" if header_length is not None else f" (with binary tensors, send the {HEADER} header)"
        raise InvalidInput("body", f"not a valid JSON inference request ({exc}){hint}") from None
    if not isinstance(data, dict):
        raise InvalidInput("body", f"must be a JSON object with inputs, got {type(data).__name__}")
    raw_inputs = data.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs", "required: a list of input tensors {name, shape, datatype, data}")
    inputs: Dict[str, InferInput] = {}
    offset = 0
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _parse_input(raw, f"inputs[{index}]", tail, offset)
        if tensor.name in inputs:
            raise InvalidInput(f"inputs[{index}].name", f"input {tensor.name} is given twice")
        inputs[tensor.name] = tensor
    if offset != len(tail):
        raise InvalidInput("body", f"{len(tail) - offset} bytes of binary data follow the JSON header beyond what the inputs' "
                                   "binary_data_size parameters claim")
    outputs = None
    raw_outputs = data.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("outputs", "must be a list of {name, parameters}")
        outputs = []
        for index, raw in enumerate(raw_outputs):
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise InvalidInput(f"outputs[{index}].name", "required: the output's name")
            params = _params(raw.get("parameters"), f"outputs[{index}].parameters")
            binary = params.get("binary_data")
            outputs.append((raw["name"], None if binary is None else bool(binary)))
    params = _params(data.get("parameters"), "parameters")
    request_id = data.get("id")
    return InferRequest(id=None if request_id is None else str(request_id), inputs=inputs, outputs=outputs,
                        binary_output=bool(params.get("binary_data_output", False)))


def _params(value: Any, field: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(field, "must be an object")
    return value


def _parse_input(raw: Any, field: str, tail: bytes, offset: int) -> Tuple[InferInput, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(field, "must be an object {name, shape, datatype, data}")
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"{field}.name", "required: the input's name")
    if name not in TOKEN_INPUTS + TEXT_INPUTS:
        raise InvalidInput(f"{field}.name", f"unknown input {name!r}: the inputs are input_ids and attention_mask (INT64), "
                                            "or text and text_pair (BYTES)")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{field}.shape", f"must be a list of non-negative integers, got {shape!r}")
    datatype = raw.get("datatype")
    want = ("INT64", "INT32") if name in TOKEN_INPUTS else ("BYTES",)
    if datatype not in want:
        raise InvalidInput(f"{field}.datatype", f"input {name} must be {' or '.join(want)}, got {datatype!r}")
    count = int(np.prod(shape)) if shape else 1
    params = _params(raw.get("parameters"), f"{field}.parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(tail):
            raise InvalidInput(f"{field}.parameters.binary_data_size",
                               f"must be the byte length of this input's binary data ({len(tail) - offset} bytes left), got {size!r}")
        chunk = tail[offset:offset + size]
        offset += size
        if datatype == "BYTES":
            value: Any = _decode_bytes(chunk, count, field)
        else:
            dtype = INT_TYPES[datatype]
            if size != count * dtype.itemsize:
                raise InvalidInput(f"{field}.parameters.binary_data_size",
                                   f"shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {size}")
            value = np.frombuffer(chunk, dtype=dtype).reshape(shape).astype(np.int64)
    else:
        if "data" not in raw:
            raise InvalidInput(f"{field}.data", "required (or send the tensor as binary data with parameters.binary_data_size)")
        flat = _flatten(raw["data"])
        if len(flat) != count:
            raise InvalidInput(f"{field}.data", f"has {len(flat)} elements, shape {shape} needs {count}")
        if datatype == "BYTES":
            if not all(isinstance(v, str) for v in flat):
                raise InvalidInput(f"{field}.data", "BYTES elements must be strings")
            value = flat
        else:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
                raise InvalidInput(f"{field}.data", f"{datatype} elements must be integers (within 64 bits)")
            try:
                value = np.array(flat, dtype=np.int64).reshape(shape)
            except OverflowError:
                raise InvalidInput(f"{field}.data", "an element does not fit in 64 bits") from None
    return InferInput(name, datatype, shape, value), offset


def _flatten(data: Any) -> List[Any]:
    if not isinstance(data, list):
        return [data]
    out: List[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _decode_bytes(chunk: bytes, count: int, field: str) -> List[str]:
    out = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(chunk):
            raise InvalidInput(f"{field}.parameters.binary_data_size", f"binary BYTES data ends after {len(out)} of {count} elements")
        (length,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + length > len(chunk):
            raise InvalidInput(f"{field}.parameters.binary_data_size", f"binary BYTES element {len(out)} runs past the data")
        try:
            out.append(chunk[pos:pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"{field}.data", f"element {len(out)} is not UTF-8 text") from None
        pos += length
    if pos != len(chunk):
        raise InvalidInput(f"{field}.parameters.binary_data_size", f"{len(chunk) - pos} bytes left after {count} BYTES elements")
    return out


def encode_response(model_id: str, request: InferRequest, outputs: Dict[str, np.ndarray]) -> Response:
    requested = request.outputs if request.outputs is not None else [(name, None) for name in outputs]
    header_outputs = []
    tail = []
    for index, (name, binary) in enumerate(requested):
        if name not in outputs:
            raise InvalidInput(f"outputs[{index}].name", f"model {model_id} has no output {name!r}; it has {', '.join(outputs)}")
        array = np.ascontiguousarray(outputs[name], dtype="<f4")
        entry: Dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if request.binary_output if binary is None else binary:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        header_outputs.append(entry)
    header: Dict[str, Any] = {"model_name": model_id, "model_version": MODEL_VERSION, "outputs": header_outputs}
    if request.id is not None:
        header["id"] = request.id
    head = json_codec.dumps(header)
    if not tail:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(tail), media_type="application/octet-stream", headers={HEADER: str(len(head))})


def create_router(plane: DataPlane) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

    @router.get("", summary="Server metadata")
    async def server_metadata() -> Dict[str, Any]:
        return plane.server_metadata()

    @router.get("/health/live", summary="Server liveness")
    async def live() -> Dict[str, Any]:
        return {"live": True}

    @router.get("/health/ready", summary="Server readiness (503 until ready, and after SIGTERM)")
    async def ready() -> JSONResponse:
        ok, body = plane.readiness()
        return JSONResponse({"ready": ok, **body}, status_code=200 if ok else 503)

    @router.get("/models/{model_id}", summary="Model metadata")
    @router.get("/models/{model_id}/versions/{version}", include_in_schema=False)
    async def metadata(model_id: str, version: Optional[str] = None) -> Dict[str, Any]:
        return plane.model_metadata(model_id, version)

    @router.get("/models/{model_id}/ready", summary="Model readiness (200 ready, 503 loading or failed, 404 unknown)")
    @router.get("/models/{model_id}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(model_id: str, version: Optional[str] = None) -> JSONResponse:
        ok, why = plane.model_ready(model_id, version)
        if ok:
            return JSONResponse({"name": model_id, "ready": True})
        return JSONResponse({"name": model_id, "ready": False, "error": why}, status_code=503)

    @router.post("/models/{model_id}/infer", summary="Inference (JSON, or JSON header + binary tensors)",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": {"type": "object", "example": {
                         "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a cat sat on the mat"]}]}}},
                     "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    @router.post("/models/{model_id}/versions/{version}/infer", include_in_schema=False)
    async def infer_route(model_id: str, request: Request, version: Optional[str] = None) -> Response:
        # For /docs; requests reach `infer` through the server's middleware, and through here only where it passes one on.
        return await infer(plane, model_id, version, request.scope, request.receive)

    return router


async def infer(plane: DataPlane, model_id: str, version: Optional[str], scope: Scope, receive: Receive) -> Response:
    """POST /v2/models/{model_id}[/versions/{version}]/infer: the answer, or a ServingError."""
    settings = plane.settings
    record = plane.ready_model(model_id, version)  # 404 or 503 before the body is read
    parsed = parse_infer_request(await read_body(scope, receive, settings.max_body_bytes), header(scope, HEADER_KEY))
    outputs = await plane.infer(record, parsed.inputs, deadline_of(scope, settings.request_timeout_ms))
    return encode_response(model_id, parsed, outputs)
