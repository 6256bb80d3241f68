"""The assigned models' records and states: loading (with what it waits for), ready (with its entry and loaded
artifact), or failed (with its reason). Thread-safe: the loader writes from its threads, requests read from the
event loop. Nothing here fetches or loads; serving/loader.py does, and reports each change here.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from contracts import StoreEntry
from serving.model import LoadedArtifact

log = logging.getLogger("serving.repository")

LOADING, READY, FAILED = "loading", "ready", "failed"


@dataclass
class ModelRecord:
    model_id: str
    state: str = LOADING
    detail: str = "waiting for start-up"  # loading: what it waits for; failed: why
    entry: Optional[StoreEntry] = None  # known once read, before the model loads (v2 metadata answers from it)
    artifact: Optional[LoadedArtifact] = None


class ModelRepository:
    """The records of one server's models, in MODEL_IDS order. `on_change` runs after a model turns ready or failed;
    `on_fail` with the model's id each time a model turns failed (once per model: a failed model stays failed)."""

    def __init__(self, model_ids: Iterable[str], on_change: Optional[Callable[[], None]] = None,
                 on_fail: Optional[Callable[[str], None]] = None) -> None:
        self.records: Dict[str, ModelRecord] = {m: ModelRecord(m) for m in model_ids}
        self._on_change = on_change
        self._on_fail = on_fail
        self._lock = threading.Lock()

    # ---- reading state (any thread) ----
    def get(self, model_id: str) -> Optional[ModelRecord]:
        return self.records.get(model_id)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.records

    def loading(self) -> List[str]:
        """The ids still loading."""
        with self._lock:
            return [r.model_id for r in self.records.values() if r.state == LOADING]

    def counts(self) -> Dict[str, int]:
        out = {LOADING: 0, READY: 0, FAILED: 0}
        for record in list(self.records.values()):
            out[record.state] += 1
        return out

    def summary(self) -> Dict[str, Any]:
        with self._lock:
            records = list(self.records.values())
        return {
            "ready_models": [r.model_id for r in records if r.state == READY],
            "loading": {r.model_id: r.detail for r in records if r.state == LOADING},
            "failed": {r.model_id: r.detail for r in records if r.state == FAILED},
        }

    # ---- state changes (the loader's threads) ----
    def waiting(self, model_ids: Sequence[str], detail: str) -> None:
        """What the models still loading wait for now."""
        with self._lock:
            for model_id in model_ids:
                record = self.records[model_id]
                if record.state == LOADING:
                    record.detail = detail

    def entry_read(self, model_id: str, entry: StoreEntry) -> None:
        with self._lock:
            self.records[model_id].entry = entry

    def ready(self, model_ids: Sequence[str], entry: StoreEntry, artifact: LoadedArtifact) -> None:
        with self._lock:
            for model_id in model_ids:
                record = self.records[model_id]
                record.entry, record.artifact = entry, artifact
                record.state, record.detail = READY, "ready"
        self._changed()

    def fail(self, model_ids: Sequence[str], reason: str, logged: bool = False) -> None:
        for model_id in model_ids:
            with self._lock:
                record = self.records[model_id]
                newly = record.state != FAILED
                record.state, record.detail = FAILED, reason
            if not logged:
                log.error("model %s failed: %s", model_id, reason)
            if newly and self._on_fail is not None:
                self._on_fail(model_id)
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
