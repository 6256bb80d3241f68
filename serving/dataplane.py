"""The one data plane both protocols call: resolve the model, encode texts or check tensors, submit to the model's
batcher, and post-process per task (embeddings; labels and scores; answer spans)."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from tokenizers import Encoding

from serving.batcher import Batcher
from serving.config import Settings
from serving.errors import InvalidInput, ModelNotFound, ModelNotReady
from serving.metrics import Metrics
from serving.repository import FAILED, LOADING, LoadedArtifact, ModelRecord, ModelRepository, init_inference_thread

log = logging.getLogger("serving.dataplane")

MAX_ANSWER_TOKENS = 30
# Texts longer than this in all are tokenised off the event loop (tokenizers is thread-safe for encoding).
INLINE_ENCODE_CHARS = 16384
QA = "question-answering"
CLASSIFY = "sequence-classification"
EMBED = "feature-extraction"


class DataPlane:
    def __init__(self, settings: Settings, repository: ModelRepository, metrics: Metrics) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.shutting_down = False
        self._batchers: Dict[str, Batcher] = {}
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

    # ---- models ----
    def record(self, model_id: str) -> ModelRecord:
        """The model's record; ModelNotFound when this server does not serve it."""
        record = self.repository.get(model_id)
        if record is None:
            ids = list(self.settings.model_ids)
            listed = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
            raise ModelNotFound(f"model {model_id!r} is not served here: server {self.settings.server_id} serves {listed} "
                                "(check the model id, or the routes that sent the request here)")
        return record

    def ready_model(self, model_id: str) -> ModelRecord:
        """The model's record if it can serve; ModelNotFound or ModelNotReady otherwise. (Shutting down does not
        count here: requests that arrived before SIGTERM are served; the middleware turns away later ones.)"""
        record = self.record(model_id)
        if record.state == LOADING:
            raise ModelNotReady(f"model {model_id} is not loaded yet ({record.detail}): retry shortly")
        if record.state == FAILED:
            raise ModelNotReady(f"model {model_id} failed to load: {record.detail}")
        return record

    def _batcher(self, record: ModelRecord) -> Batcher:
        batcher = self._batchers.get(record.model_id)
        if batcher is None:
            artifact = record.artifact
            assert artifact is not None and self._slots is not None and self._executor is not None
            max_batch = artifact.fixed_batch or self.settings.max_batch_size
            batcher = Batcher(record.model_id, artifact.forward, max_batch_size=max_batch,
                              max_delay_ms=self.settings.max_delay_ms, queue_size=self.settings.queue_size,
                              timeout_ms=self.settings.request_timeout_ms, slots=self._slots, executor=self._executor,
                              workers=self.settings.workers, metrics=self.metrics)
            self._batchers[record.model_id] = batcher
        return batcher

    def _check_rows(self, rows: int, field: str) -> None:
        if rows < 1:
            raise InvalidInput(field, "give at least one input")
        if rows > self.settings.queue_size:
            raise InvalidInput(field, f"{rows} inputs in one request; at most {self.settings.queue_size} (QUEUE_SIZE): split the request")

    # ---- inference ----
    async def infer_tensors(self, model_id: str, input_ids: np.ndarray, attention_mask: Optional[np.ndarray],
                            deadline: float) -> Dict[str, np.ndarray]:
        """Outputs by name for int64 input_ids [batch, sequence <= traced length] (attention_mask: ones if absent)."""
        record = self.ready_model(model_id)
        artifact = record.artifact
        assert artifact is not None
        ids, mask, seq = self._check_tensors(artifact, input_ids, attention_mask)
        outputs = await self._batcher(record).submit(ids, mask, deadline)
        named = dict(zip(artifact.output_names, outputs))
        if artifact.task == QA:  # per-token outputs back to the request's sequence length
            named = {name: out[:, :seq] for name, out in named.items()}
        return named

    async def infer_texts(self, model_id: str, texts: Sequence[str], pairs: Optional[Sequence[str]], deadline: float,
                          field: str = "text") -> Dict[str, np.ndarray]:
        """Outputs by name for texts (and optional second texts), tokenised by the model's own tokenizer."""
        record = self.ready_model(model_id)
        artifact = record.artifact
        assert artifact is not None
        self._check_rows(len(texts), field)
        ids, mask, _ = await self._encode(artifact, texts, pairs)
        outputs = await self._batcher(record).submit(ids, mask, deadline)
        return dict(zip(artifact.output_names, outputs))

    async def predict(self, model_id: str, texts: Sequence[str], contexts: Optional[Sequence[str]], deadline: float,
                      fields: Sequence[str] = ("inputs", "context")) -> Dict[str, Any]:
        """The /predictions answer: embeddings, labels and scores, or answers, one per input text."""
        record = self.ready_model(model_id)
        artifact = record.artifact
        assert artifact is not None
        self._check_rows(len(texts), fields[0])
        pairs = pair_up(texts, contexts, fields)
        if artifact.task == QA and pairs is None:
            raise InvalidInput(fields[1], f"model {model_id} answers questions: give the context to search for the answer")
        ids, mask, encodings = await self._encode(artifact, texts, pairs)
        outputs = await self._batcher(record).submit(ids, mask, deadline)
        named = dict(zip(artifact.output_names, outputs))
        if artifact.task == EMBED:
            return {"model": model_id, "embeddings": named["embedding"].tolist()}
        if artifact.task == CLASSIFY:
            labels, scores = classify(named["logits"], artifact.labels)
            return {"model": model_id, "labels": labels, "scores": scores}
        assert pairs is not None
        answers = [best_answer(start, end, encoding, context)
                   for start, end, encoding, context in zip(named["start_logits"], named["end_logits"], encodings, pairs)]
        return {"model": model_id, "answers": answers}

    async def _encode(self, artifact: LoadedArtifact, texts: Sequence[str], pairs: Optional[Sequence[str]]) -> Any:
        size = sum(map(len, texts)) + (sum(map(len, pairs)) if pairs is not None else 0)
        if size <= INLINE_ENCODE_CHARS:
            return artifact.encoder.encode(texts, pairs)
        return await asyncio.get_running_loop().run_in_executor(None, artifact.encoder.encode, texts, pairs)

    def _check_tensors(self, artifact: LoadedArtifact, input_ids: np.ndarray, attention_mask: Optional[np.ndarray]) -> Any:
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
        if seq == length:
            return input_ids.astype(np.int64, copy=False), attention_mask.astype(np.int64, copy=False), seq
        ids = np.full((rows, length), artifact.encoder.pad_id, dtype=np.int64)
        mask = np.zeros((rows, length), dtype=np.int64)
        ids[:, :seq] = input_ids
        mask[:, :seq] = attention_mask
        return ids, mask, seq


def pair_up(texts: Sequence[str], contexts: Optional[Sequence[str]], fields: Sequence[str]) -> Optional[List[str]]:
    """One second text per text: none, one shared by all, or one each."""
    if contexts is None:
        return None
    if len(contexts) == 1:
        return [contexts[0]] * len(texts)
    if len(contexts) != len(texts):
        raise InvalidInput(fields[1], f"give one, or one per input ({len(texts)}); got {len(contexts)}")
    return list(contexts)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def classify(logits: np.ndarray, names: Sequence[str]) -> Any:
    """(label, probability) of the most likely class per row; labels from the bundle's manifest, else LABEL_<i>."""
    probs = softmax(logits.astype(np.float64))
    best = probs.argmax(axis=-1)
    labels = [names[i] if i < len(names) else f"LABEL_{i}" for i in best.tolist()]
    scores = [float(probs[row, i]) for row, i in enumerate(best.tolist())]
    return labels, scores


def best_answer(start_logits: np.ndarray, end_logits: np.ndarray, encoding: Encoding, context: str,
                max_tokens: int = MAX_ANSWER_TOKENS) -> Dict[str, Any]:
    """The most likely span (start <= end, within the context, at most max_tokens long), as text and character
    offsets into the context; score = p(start) * p(end) with both softmaxes over the context tokens."""
    in_context = np.array([sid == 1 for sid in encoding.sequence_ids], dtype=bool)
    length = min(len(in_context), start_logits.shape[0])
    in_context = in_context[:length]
    if not in_context.any():  # the context was truncated away entirely
        return {"text": "", "start": 0, "end": 0, "score": 0.0}
    start = np.where(in_context, start_logits[:length].astype(np.float64), -np.inf)
    end = np.where(in_context, end_logits[:length].astype(np.float64), -np.inf)
    spans = np.outer(softmax(start), softmax(end))
    spans = np.tril(np.triu(spans), max_tokens - 1)  # start <= end < start + max_tokens
    i, j = np.unravel_index(int(np.argmax(spans)), spans.shape)
    char_start, char_end = encoding.offsets[int(i)][0], encoding.offsets[int(j)][1]
    return {"text": context[char_start:char_end], "start": int(char_start), "end": int(char_end), "score": float(spans[i, j])}
