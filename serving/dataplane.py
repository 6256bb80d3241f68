"""The one data plane both protocols call (KServe's DataPlane): server and model metadata, server and model
readiness, the input rules of both protocols, and inference through each model's batcher.

The protocol modules (v1.py, v2.py) decode a request, call one method here and encode its answer. A request
resolves its model once (`ready_model`: 404 unknown, 503 not loaded), before its body is read, and passes the
record on; the loaded artifact (serving/model.py) runs the forward and shapes the per-task answer.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from contracts.tasks import OUTPUT_NAMES, QUESTION_ANSWERING
from serving.batcher import Batcher
from serving.config import Settings
from serving.errors import InvalidInput, ModelNotFound, ModelNotReady
from serving.metrics import Metrics
from serving.model import LoadedArtifact, init_inference_thread
from serving.repository import FAILED, LOADING, READY, ModelRecord, ModelRepository

log = logging.getLogger("serving.dataplane")

SERVER_NAME = "modelfleet"
SERVER_VERSION = "0.1.0"
MODEL_VERSION = "1"  # every model has one version: its entry names one artifact
# Texts longer than this in all are tokenised off the event loop (tokenizers is thread-safe for encoding).
INLINE_ENCODE_CHARS = 16384
TOKEN_INPUTS = ("input_ids", "attention_mask")
TEXT_INPUTS = ("text", "text_pair", "context")


class Arrival:
    """One inference request between its arrival (the middleware) and its batcher's queue."""

    __slots__ = ("model_id", "open")

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.open = True


# The request's Arrival, set by the middleware in the request's task, closed when its rows reach the queue.
ARRIVAL: ContextVar[Optional[Arrival]] = ContextVar("modelfleet_arrival", default=None)


@dataclass
class InferInput:
    """One decoded v2 input tensor."""

    name: str
    datatype: str
    shape: List[int]
    value: Any  # np.ndarray (int64) of `shape`, or a flat list of str for BYTES


class DataPlane:
    def __init__(self, settings: Settings, repository: ModelRepository, metrics: Metrics) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.shutting_down = False
        self._batchers: Dict[str, Batcher] = {}
        # per model: requests inside the server whose rows are not queued yet (the batcher waits briefly for them)
        self._arriving: Dict[str, int] = {}
        self._slots: Optional[asyncio.Semaphore] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    # ---- life cycle (on the event loop) ----
    def start(self) -> None:
        self._slots = asyncio.Semaphore(self.settings.workers)
        self._executor = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="inference",
                                            initializer=init_inference_thread)

    async def stop(self) -> None:
        self.shutting_down = True
        for batcher in list(self._batchers.values()):
            await batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    # ---- arrivals (on the event loop) ----
    def arrive(self, model_id: str) -> Arrival:
        """Count an inference request for model_id from its arrival until its rows are queued (or it leaves)."""
        arrival = Arrival(model_id)
        self._arriving[model_id] = self._arriving.get(model_id, 0) + 1
        ARRIVAL.set(arrival)
        return arrival

    def settle(self, arrival: Optional[Arrival]) -> None:
        """The request's rows are queued, or it is leaving without reaching the queue (then its batcher, which may
        be waiting for it, is woken)."""
        if arrival is None or not arrival.open:
            return
        self._close(arrival)
        batcher = self._batchers.get(arrival.model_id)
        if batcher is not None:
            batcher.poke()

    def _close(self, arrival: Arrival) -> None:
        arrival.open = False
        left = self._arriving[arrival.model_id] - 1
        if left:
            self._arriving[arrival.model_id] = left
        else:  # no key stays behind for ids that were never served (any path can name one)
            del self._arriving[arrival.model_id]

    def arriving(self, model_id: str) -> int:
        return self._arriving.get(model_id, 0)

    # ---- the server ----
    def server_metadata(self) -> Dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"],
                "server_id": self.settings.server_id}

    def readiness(self) -> Tuple[bool, Dict[str, Any]]:
        """Ready once no model is loading and at least one serves (a failed model answers 503 with its reason and
        is listed here, but does not take the server's other models out of service); never after SIGTERM."""
        summary = self.repository.summary()
        if self.shutting_down:
            return False, {"status": "shutting down", "message": "the server is shutting down", **summary}
        if summary["loading"]:
            waiting = ", ".join(f"{m} ({why})" for m, why in list(summary["loading"].items())[:5])
            return False, {"status": "loading", "message": f"{len(summary['loading'])} model(s) not loaded yet: {waiting}", **summary}
        if not summary["ready_models"]:
            return False, {"status": "failed", "message": "no model could be loaded: see failed for each model's reason", **summary}
        if summary["failed"]:
            failed = ", ".join(summary["failed"])
            return True, {"status": "degraded", "message": f"{len(summary['failed'])} model(s) failed to load and answer 503: "
                                                           f"{failed} (see failed for the reasons)", **summary}
        return True, {"status": "ready", "message": f"all {len(summary['ready_models'])} model(s) ready", **summary}

    # ---- models ----
    def record(self, model_id: str, version: Optional[str] = None) -> ModelRecord:
        """The model's record, whatever its state; ModelNotFound when this server does not serve it (or not that version)."""
        record = self.repository.get(model_id)
        if record is None:
            ids = list(self.settings.model_ids)
            listed = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
            raise ModelNotFound(f"model {model_id!r} is not served here: server {self.settings.server_id} serves {listed} "
                                "(check the model id, or the routes that sent the request here)")
        if version is not None and version != MODEL_VERSION:
            raise ModelNotFound(f"model {model_id} has no version {version!r}: it has only version {MODEL_VERSION}")
        return record

    def ready_model(self, model_id: str, version: Optional[str] = None) -> ModelRecord:
        """The model's record if it can serve; ModelNotFound or ModelNotReady otherwise. The one readiness check of
        an inference request. (Shutting down does not count here: requests that arrived before SIGTERM are served;
        the middleware turns away later ones.)"""
        record = self.record(model_id, version)
        if record.state == LOADING:
            raise ModelNotReady(f"model {model_id} is not loaded yet ({record.detail}): retry shortly")
        if record.state == FAILED:
            raise ModelNotReady(f"model {model_id} failed to load: {record.detail}")
        return record

    def model_ready(self, model_id: str, version: Optional[str] = None) -> Tuple[bool, Optional[str]]:
        """(ready, why not): a model is ready when loaded and the server is not shutting down."""
        record = self.record(model_id, version)
        if record.state == READY and not self.shutting_down:
            return True, None
        reason = "the server is shutting down" if self.shutting_down else f"{record.state}: {record.detail}"
        return False, f"model {model_id} is not ready ({reason})"

    def model_metadata(self, model_id: str, version: Optional[str] = None) -> Dict[str, Any]:
        """The v2 model metadata, from the model's entry (known before the artifact loads)."""
        record = self.record(model_id, version)
        entry = record.entry
        if entry is None:
            raise ModelNotReady(f"model {model_id}'s entry has not been read yet ({record.detail}): retry shortly")
        seq = entry.sequence_length
        outputs = []
        for name in OUTPUT_NAMES[entry.task]:
            shape = list(entry.outputs.get(name, [0, 0]))
            dims = [-1, -1] if entry.task == QUESTION_ANSWERING else [-1] + shape[1:]
            outputs.append({"name": name, "datatype": "FP32", "shape": dims})
        return {
            "name": model_id, "versions": [MODEL_VERSION], "platform": "pytorch_libtorch",
            "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, seq]},
                       {"name": "attention_mask", "datatype": "INT64", "shape": [-1, seq]},
                       {"name": "text", "datatype": "BYTES", "shape": [-1]},
                       {"name": "text_pair", "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
            "parameters": {"task": entry.task, "processor": entry.processor, "sequence_length": seq,
                           "traced_batch_size": entry.batch_size, "precision": entry.precision, "state": record.state},
        }

    # ---- inference: the reference design's /predictions ----
    async def predict(self, record: ModelRecord, texts: Sequence[str], contexts: Optional[Sequence[str]], deadline: float,
                      fields: Sequence[str] = ("inputs", "context")) -> Dict[str, Any]:
        """The /predictions answer for a ready model: embeddings, labels and scores, or answers, one per input text."""
        artifact = self._artifact(record)
        self._check_rows(len(texts), fields[0])
        pairs = pair_up(texts, contexts, fields)
        if artifact.task == QUESTION_ANSWERING and pairs is None:
            raise InvalidInput(fields[1], f"model {record.model_id} answers questions: give the context to search for the answer")
        ids, mask, encodings = await self._encode(artifact, texts, pairs)
        outputs = await self._submit(record, ids, mask, deadline)
        return {"model": record.model_id, **artifact.postprocess(outputs, encodings, pairs)}

    # ---- inference: KServe v2 ----
    async def infer(self, record: ModelRecord, inputs: Mapping[str, InferInput], deadline: float) -> Dict[str, np.ndarray]:
        """Outputs by name for a ready model's v2 inputs, in request order: input_ids (and attention_mask), or text
        (and text_pair or context); errors name the input at fault as inputs[<its index>]."""
        names = list(inputs)
        field = {name: f"inputs[{i}]" for i, name in enumerate(names)}
        if "input_ids" in inputs and "text" in inputs:
            raise InvalidInput("inputs", "give either input_ids (and attention_mask) or text (and text_pair), not both")
        if "input_ids" in inputs:
            extra = [n for n in names if n not in TOKEN_INPUTS]
            if extra:
                raise InvalidInput(f"{field[extra[0]]}.name", f"{extra[0]} does not go with input_ids")
            mask = inputs.get("attention_mask")
            return await self._infer_tensors(record, inputs["input_ids"].value, None if mask is None else mask.value, deadline)
        if "text" in inputs:
            texts = _texts(inputs["text"], field["text"])
            second = inputs.get("text_pair") or inputs.get("context")
            if "text_pair" in inputs and "context" in inputs:
                raise InvalidInput(field["context"] + ".name", "give text_pair or context, not both")
            if "attention_mask" in inputs:
                raise InvalidInput(field["attention_mask"] + ".name", "attention_mask goes with input_ids, not text")
            pairs = None
            if second is not None:
                pairs = _texts(second, field[second.name])
                if len(pairs) != len(texts):
                    raise InvalidInput(f"{field[second.name]}.shape", f"needs one {second.name} per text ({len(texts)}), got {len(pairs)}")
            artifact = self._artifact(record)
            if artifact.task == QUESTION_ANSWERING and pairs is None:
                raise InvalidInput("inputs", f"model {record.model_id} answers questions: add a text_pair input with the context")
            self._check_rows(len(texts), f"{field['text']}.shape")
            ids, mask, _ = await self._encode(artifact, texts, pairs)
            outputs = await self._submit(record, ids, mask, deadline)
            return dict(zip(artifact.output_names, outputs))
        raise InvalidInput("inputs", "give input_ids (and attention_mask) as INT64 [batch, sequence], or text as BYTES [batch]")

    async def _infer_tensors(self, record: ModelRecord, input_ids: np.ndarray, attention_mask: Optional[np.ndarray],
                             deadline: float) -> Dict[str, np.ndarray]:
        """Outputs by name for int64 input_ids [batch, sequence <= traced length] (attention_mask: ones if absent)."""
        artifact = self._artifact(record)
        mask, seq = self._check_tensors(artifact, input_ids, attention_mask)
        ids, mask = artifact.pad_to_traced_length(input_ids, mask)
        outputs = await self._submit(record, ids, mask, deadline)
        return artifact.tensors(outputs, seq)

    # ---- the input rules ----
    def _check_rows(self, rows: int, field: str) -> None:
        if rows < 1:
            raise InvalidInput(field, "give at least one input")
        if rows > self.settings.queue_size:
            raise InvalidInput(field, f"{rows} inputs in one request; at most {self.settings.queue_size} (QUEUE_SIZE): split the request")

    def _check_tensors(self, artifact: LoadedArtifact, input_ids: np.ndarray, attention_mask: Optional[np.ndarray]) -> Any:
        """(attention_mask, the request's sequence length) for valid token tensors; InvalidInput naming the one at fault."""
        length = artifact.sequence_length
        if input_ids.ndim != 2:
            raise InvalidInput("input_ids", f"must have shape [batch, sequence], got {list(input_ids.shape)}")
        rows, seq = input_ids.shape
        self._check_rows(rows, "input_ids")
        if not 1 <= seq <= length:
            raise InvalidInput("input_ids", f"sequence length {seq} is not within 1..{length}, the length the model was traced "
                                            "at: truncate the tokens")
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        elif list(attention_mask.shape) != list(input_ids.shape):
            raise InvalidInput("attention_mask", f"shape {list(attention_mask.shape)} differs from input_ids' {list(input_ids.shape)}")
        vocab = artifact.encoder.vocab_size
        if input_ids.size and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            bad = int(input_ids.min()) if int(input_ids.min()) < 0 else int(input_ids.max())
            raise InvalidInput("input_ids", f"token id {bad} is outside the model's vocabulary 0..{vocab - 1}")
        if attention_mask.size and not np.isin(attention_mask, (0, 1)).all():
            raise InvalidInput("attention_mask", "values must be 0 or 1")
        return attention_mask, seq

    # ---- running ----
    def _artifact(self, record: ModelRecord) -> LoadedArtifact:
        artifact = record.artifact
        assert artifact is not None, "ready_model() resolves the record first"
        return artifact

    async def _encode(self, artifact: LoadedArtifact, texts: Sequence[str], pairs: Optional[Sequence[str]]) -> Any:
        size = sum(map(len, texts)) + (sum(map(len, pairs)) if pairs is not None else 0)
        if size <= INLINE_ENCODE_CHARS:
            return artifact.encoder.encode(texts, pairs)
        return await asyncio.get_running_loop().run_in_executor(None, artifact.encoder.encode, texts, pairs)

    async def _submit(self, record: ModelRecord, ids: np.ndarray, mask: np.ndarray, deadline: float) -> List[np.ndarray]:
        batcher = self._batcher(record)
        arrival = ARRIVAL.get()
        if arrival is not None and arrival.open:  # queued now: no longer one its batcher waits for
            self._close(arrival)
        return await batcher.submit(ids, mask, deadline)

    def _batcher(self, record: ModelRecord) -> Batcher:
        batcher = self._batchers.get(record.model_id)
        if batcher is None:
            artifact = self._artifact(record)
            assert self._slots is not None and self._executor is not None, "start() runs before the first request"
            max_batch = artifact.fixed_batch or self.settings.max_batch_size
            batcher = Batcher(record.model_id, artifact.forward, max_batch_size=max_batch,
                              max_delay_ms=self.settings.max_delay_ms, queue_size=self.settings.queue_size,
                              timeout_ms=self.settings.request_timeout_ms, slots=self._slots, executor=self._executor,
                              workers=self.settings.workers, metrics=self.metrics,
                              arriving=lambda model_id=record.model_id: self.arriving(model_id))
            self._batchers[record.model_id] = batcher
        return batcher


def pair_up(texts: Sequence[str], contexts: Optional[Sequence[str]], fields: Sequence[str]) -> Optional[List[str]]:
    """One second text per text: none, one shared by all, or one each."""
    if contexts is None:
        return None
    if len(contexts) == 1:
        return [contexts[0]] * len(texts)
    if len(contexts) != len(texts):
        raise InvalidInput(fields[1], f"give one, or one per input ({len(texts)}); got {len(contexts)}")
    return list(contexts)


def _texts(tensor: InferInput, field: str) -> List[str]:
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidInput(f"{field}.shape", f"{tensor.name} must have shape [batch] or [batch, 1], got {tensor.shape}")
    return list(tensor.value)
