"""Start-up: read the assigned models' entries, admit them within MEMORY_BUDGET_MIB, fetch their bundles
(sha256-verified) into MODEL_CACHE_DIR, and load each artifact once (TorchScript or AOTInductor, as its manifest
says); every step reports to the repository.

It runs in a background thread, so the HTTP server answers probes meanwhile. An unreachable store is retried
with capped exponential backoff (models stay loading, the server not ready, the process alive). A model that
fails to verify or load, or that would overrun MEMORY_BUDGET_MIB, is failed with its reason; the others serve.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from contracts import ContractError, StoreEntry
from contracts.measures import resident_memory_mib
from serving.config import Settings
from serving.model import init_inference_thread, load_artifact
from serving.repository import LOADING, ModelRepository
from store import IntegrityError, StoreError, fetch_bundle, open_store, read_entry
from store.base import Store
from store.bundles import manifest_key

log = logging.getLogger("serving.loader")

FIRST_RETRY_S = 0.5
FETCH_WORKERS = 4
T = TypeVar("T")
R = TypeVar("R")


def process_rss_mib() -> float:
    """This process's resident memory (0 where it cannot be read: then the budget charges the server nothing)."""
    try:
        return resident_memory_mib()
    except (OSError, ValueError, IndexError):
        return 0.0


class ModelLoader:
    """Loads the repository's models for `settings`. Call start() once; stop() at shutdown."""

    def __init__(self, settings: Settings, repository: ModelRepository) -> None:
        self.settings = settings
        self.repository = repository
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop retrying (at shutdown); models still loading stay loading."""
        self._stop.set()

    def _run(self) -> None:
        init_inference_thread()
        started = time.monotonic()
        try:
            self._load_all()
        except Exception as exc:  # never let start-up kill the process: fail what is left
            log.exception("start-up failed")
            self.repository.fail(self.repository.loading(), f"internal error during start-up: {exc}")
        if self._stop.is_set():
            return
        summary = self.repository.summary()
        failed = "; ".join(f"{m}: {why}" for m, why in summary["failed"].items())
        log.info("start-up finished in %.1f s: %d model(s) ready, %d failed%s", time.monotonic() - started,
                 len(summary["ready_models"]), len(summary["failed"]), f" ({failed})" if failed else "")

    def _load_all(self) -> None:
        repository = self.repository
        try:
            store = open_store(self.settings.store_uri)
        except StoreError as exc:
            repository.fail(list(repository.records), f"cannot open the store: {exc}")
            return
        entries = self._read_entries(store)
        if self._stop.is_set():
            return
        self._apply_budget(entries)
        groups: Dict[str, List[str]] = {}
        for model_id, entry in entries.items():
            if repository.records[model_id].state == LOADING:
                groups.setdefault(entry.artifact, []).append(model_id)
        jobs = [(digest, ids, entries[ids[0]]) for digest, ids in groups.items()]

        def job(args: Tuple[str, List[str], StoreEntry]) -> None:
            try:
                self._fetch_and_load(store, *args)
            except Exception as exc:
                log.exception("fetching and loading artifact %s failed", args[0])
                repository.fail(args[1], f"internal error while loading: {exc}")

        parallel_map(job, jobs, FETCH_WORKERS)

    def _read_entries(self, store: Store) -> Dict[str, StoreEntry]:
        """Each model's entry for this processor, retrying an unreachable store until it answers (or stop())."""
        repository = self.repository
        processor = self.settings.processor
        pending = list(repository.records)
        found: Dict[str, StoreEntry] = {}
        delay = FIRST_RETRY_S
        repository.waiting(pending, f"reading its entry from {store.uri}")

        def read(model_id: str) -> Tuple[str, Any]:
            try:
                return model_id, read_entry(store, model_id, processor)
            except (StoreError, ContractError) as exc:
                return model_id, exc

        while pending and not self._stop.is_set():
            retry = []
            for model_id, result in parallel_map(read, pending, max(1, store.read_workers)):
                if isinstance(result, StoreEntry):
                    found[model_id] = result
                    repository.entry_read(model_id, result)  # its metadata is known before it loads
                elif result is None:
                    repository.fail([model_id], f"the store {store.uri} has no entry models/{model_id}/{processor}.json: trace it "
                                                f"for {processor} (python -m tracing trace --processor {processor}) or serve it elsewhere")
                elif isinstance(result, ContractError):
                    repository.fail([model_id], f"its entry is not valid: {result}")
                else:
                    retry.append((model_id, result))
            if not retry:
                break
            pending = [m for m, _ in retry]
            reason = str(retry[0][1])
            log.warning("store unreachable (%s); %d model(s) waiting; retrying in %.1f s", reason, len(pending), delay)
            repository.waiting(pending, f"waiting for the store: {reason}")
            self._stop.wait(delay)
            delay = min(delay * 2, self.settings.store_retry_max_s)
        return found

    def _apply_budget(self, entries: Dict[str, StoreEntry]) -> None:
        """Admit models in MODEL_IDS order while the process's base plus their artifacts' host memory fits
        MEMORY_BUDGET_MIB, which the plan sizes as server base + models (ARCHITECTURE.md, memory_budget_mib)."""
        budget = self.settings.memory_budget_mib
        base = self.settings.server_base_mib if self.settings.server_base_mib is not None else process_rss_mib()
        if budget is not None:
            log.info("memory budget %g MiB: %.0f MiB for the server itself, %.0f MiB for models", budget, base, budget - base)
            budget -= base
        committed: Dict[str, float] = {}
        for model_id in self.settings.model_ids:
            entry = entries.get(model_id)
            if entry is None or entry.artifact in committed:
                continue  # no entry (already failed), or an artifact already admitted (loaded once, shared)
            need = float(entry.profile.host_memory_mib)
            used = sum(committed.values())
            if budget is not None and used + need > budget:
                reason = (f"over the memory budget: it needs {need:.1f} MiB (host_memory_mib of its profile) but "
                          f"MEMORY_BUDGET_MIB is {budget + base:g} MiB, of which the server itself takes {base:.0f} MiB and "
                          f"{used:.1f} MiB already go to {len(committed)} artifact(s) listed before it: "
                          "raise MEMORY_BUDGET_MIB or move the model to another server")
                log.error("refusing to load %s: %s", model_id, reason)
                self.repository.fail([model_id], reason, logged=True)
            else:
                committed[entry.artifact] = need

    def _fetch_and_load(self, store: Store, digest: str, model_ids: Sequence[str], entry: StoreEntry) -> None:
        init_inference_thread()
        repository, settings = self.repository, self.settings
        delay = FIRST_RETRY_S
        folder: Optional[Path] = None
        while folder is None:
            if self._stop.is_set():
                return
            repository.waiting(model_ids, f"fetching artifact {digest}")
            try:
                if not store.exists(manifest_key(digest)):
                    repository.fail(model_ids, f"its artifact {digest} is not in {store.uri} (or its publish did not finish): "
                                               "re-publish it with python -m tracing trace")
                    return
                folder = fetch_bundle(store, digest, settings.model_cache_dir)
            except (IntegrityError, ContractError) as exc:
                repository.fail(model_ids, f"its artifact failed verification: {exc}")
                return
            except StoreError as exc:
                log.warning("fetching artifact %s failed (%s); retrying in %.1f s", digest, exc, delay)
                repository.waiting(model_ids, f"waiting for the store: {exc}")
                self._stop.wait(delay)
                delay = min(delay * 2, settings.store_retry_max_s)
            except OSError as exc:
                repository.fail(model_ids, f"cannot write the bundle into MODEL_CACHE_DIR {settings.model_cache_dir}: {exc}")
                return
        repository.waiting(model_ids, f"loading artifact {digest}")
        started = time.monotonic()
        try:
            artifact = load_artifact(folder, digest, entry, settings.processor, settings.max_batch_size, settings.workers)
        except Exception as exc:
            log.exception("loading artifact %s failed", digest)
            repository.fail(model_ids, f"cannot load its artifact {folder}: {exc}")
            return
        repository.ready(model_ids, entry, artifact)
        log.info("model(s) %s ready: artifact %s, %s, sequence length %d, loaded and warmed up in %.2f s",
                 ", ".join(model_ids), digest[:12], artifact.task, artifact.sequence_length, time.monotonic() - started)


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> List[R]:
    """fn over items on up to `workers` daemon threads (a stuck store call never holds up process exit); fn must not raise."""
    items = list(items)
    results: List[Any] = [None] * len(items)
    if not items:
        return results
    cursor = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        init_inference_thread()
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            results[index] = fn(items[index])

    threads = [threading.Thread(target=work, name="model-fetch", daemon=True) for _ in range(min(workers, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
