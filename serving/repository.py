"""The assigned models: read their entries, fetch their bundles (sha256-verified) into MODEL_CACHE_DIR, load each
artifact once, warm it up, and keep each model's state: loading, ready, or failed with its reason.

Start-up runs in a background thread, so the HTTP server answers probes meanwhile. An unreachable store is
retried with capped exponential backoff (models stay loading, the server not ready, the process alive). A model
that fails to verify or load, or that would overrun MEMORY_BUDGET_MIB, is failed with its reason; the others serve.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

from contracts import BundleManifest, ContractError, StoreEntry, parse
from serving.config import Settings
from serving.text import TextEncoder
from store import IntegrityError, StoreError, fetch_bundle, open_store, read_entry
from store.base import Store
from store.bundles import manifest_key

log = logging.getLogger("serving.repository")

LOADING, READY, FAILED = "loading", "ready", "failed"
# The artifact's outputs in the order its forward returns them (tracing/heads.py, OUTPUT_NAMES).
OUTPUT_NAMES: Dict[str, Tuple[str, ...]] = {
    "feature-extraction": ("embedding",),
    "sequence-classification": ("logits",),
    "question-answering": ("start_logits", "end_logits"),
}
FIRST_RETRY_S = 0.5
FETCH_WORKERS = 4
T = TypeVar("T")
R = TypeVar("R")


# Trimmed lengths are multiples of this, so a handful of shapes recur (allocator reuse, steady timings).
TRIM_MULTIPLE = 8
NO_ANSWER_LOGIT = -1e4


def served_length(mask: np.ndarray, sequence_length: int) -> int:
    """How far a batch runs on a cpu or gpu artifact: its longest row, rounded up to TRIM_MULTIPLE,
    at most the traced length."""
    longest = int(mask.sum(axis=1).max()) if mask.size else 0
    return min(sequence_length, max(TRIM_MULTIPLE, -(-longest // TRIM_MULTIPLE) * TRIM_MULTIPLE))


class LoadedArtifact:
    """One traced bundle in memory, shared by every model id whose entry names its digest."""

    def __init__(self, digest: str, bundle_dir: Path, manifest: BundleManifest, module: Any, encoder: TextEncoder,
                 device: str, fixed_batch: Optional[int]) -> None:
        self.digest = digest
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.module = module
        self.encoder = encoder
        self.device = device
        self.fixed_batch = fixed_batch  # Neuron artifacts run only at their traced batch
        self.task = manifest.task
        self.sequence_length = manifest.sequence_length
        self.output_names = OUTPUT_NAMES[manifest.task]
        self.labels = list(manifest.labels or [])

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> List[np.ndarray]:
        """Run rows [n, sequence_length] (padding or splitting to what the artifact accepts); float32 outputs [n, ...]."""
        if self.fixed_batch is None:
            return self._run_trimmed(input_ids, attention_mask)
        rows = input_ids.shape[0]
        step = self.fixed_batch or rows
        parts: List[List[np.ndarray]] = []
        for start in range(0, rows, step):
            ids, mask = input_ids[start:start + step], attention_mask[start:start + step]
            n = ids.shape[0]
            if self.fixed_batch and n < self.fixed_batch:  # fill the traced batch with copies of a real row
                fill = self.fixed_batch - n
                ids = np.concatenate([ids, np.repeat(ids[:1], fill, axis=0)])
                mask = np.concatenate([mask, np.repeat(mask[:1], fill, axis=0)])
            parts.append([out[:n] for out in self._run(ids, mask)])
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]

    def _run_trimmed(self, ids: np.ndarray, mask: np.ndarray) -> List[np.ndarray]:
        """cpu and gpu artifacts take any shape: run only up to the batch's longest row (rounded up to
        TRIM_MULTIPLE), since attention costs grow with the padded length, not the text's. Padding
        positions are masked, so real tokens' outputs do not change; per-token outputs (QA logits)
        are padded back to the traced length with a score no answer can take."""
        length = served_length(mask, self.sequence_length)
        outputs = self._run(ids[:, :length], mask[:, :length])
        if length == ids.shape[1] or self.task != "question-answering":
            return outputs
        pad = ((0, 0), (0, ids.shape[1] - length))
        return [np.pad(out, pad, constant_values=NO_ANSWER_LOGIT) for out in outputs]

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> List[np.ndarray]:
        with torch.no_grad():
            result = self.module(torch.from_numpy(np.ascontiguousarray(ids)).to(self.device),
                                 torch.from_numpy(np.ascontiguousarray(mask)).to(self.device))
        tensors = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(tensors) != len(self.output_names):
            raise RuntimeError(f"artifact {self.digest} returned {len(tensors)} tensor(s); a {self.task} artifact returns "
                               f"{', '.join(self.output_names)}: re-trace it with python -m tracing trace --force")
        return [t.detach().float().cpu().numpy() for t in tensors]

    def warm_up(self, max_batch: int) -> None:
        """A few forwards at the traced shape (and the largest batch it will see), checking the output shapes."""
        ids, mask, _ = self.encoder.encode(["warm up"])
        batches = [self.fixed_batch] * 2 if self.fixed_batch else [1, 1, max_batch, max_batch]
        for batch in batches:
            outputs = self.forward(np.repeat(ids, batch, axis=0), np.repeat(mask, batch, axis=0))
            for name, out in zip(self.output_names, outputs):
                want = self.manifest.outputs.get(name)
                if want is not None and list(out.shape[1:]) != list(want[1:]):
                    raise RuntimeError(f"artifact {self.digest} output {name} has shape {list(out.shape)}, its manifest "
                                       f"says [batch, {', '.join(map(str, want[1:]))}]: re-trace it")


@dataclass
class ModelRecord:
    model_id: str
    state: str = LOADING
    detail: str = "waiting for start-up"  # loading: what it waits for; failed: why
    entry: Optional[StoreEntry] = None
    artifact: Optional[LoadedArtifact] = None


def process_rss_mib() -> float:
    """This process's resident memory (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class ModelRepository:
    """The models of one server. Call start() once; get(model_id) from any thread."""

    def __init__(self, settings: Settings, on_change: Optional[Callable[[], None]] = None) -> None:
        self.settings = settings
        self.records: Dict[str, ModelRecord] = {m: ModelRecord(m) for m in settings.model_ids}
        self._on_change = on_change
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- reading state (any thread) ----
    def get(self, model_id: str) -> Optional[ModelRecord]:
        return self.records.get(model_id)

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

    # ---- start-up ----
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
            for record in self.records.values():
                if record.state == LOADING:
                    self._fail(record.model_id, f"internal error during start-up: {exc}")
        if self._stop.is_set():
            return
        summary = self.summary()
        failed = "; ".join(f"{m}: {why}" for m, why in summary["failed"].items())
        log.info("start-up finished in %.1f s: %d model(s) ready, %d failed%s", time.monotonic() - started,
                 len(summary["ready_models"]), len(summary["failed"]), f" ({failed})" if failed else "")

    def _load_all(self) -> None:
        settings = self.settings
        try:
            store = open_store(settings.store_uri)
        except StoreError as exc:
            for model_id in self.records:
                self._fail(model_id, f"cannot open the store: {exc}")
            return
        entries = self._read_entries(store)
        if self._stop.is_set():
            return
        self._apply_budget(entries)
        groups: Dict[str, List[str]] = {}
        for model_id, entry in entries.items():
            if self.records[model_id].state == LOADING:
                groups.setdefault(entry.artifact, []).append(model_id)
        jobs = [(digest, ids, entries[ids[0]]) for digest, ids in groups.items()]

        def job(args: Tuple[str, List[str], StoreEntry]) -> None:
            try:
                self._fetch_and_load(store, *args)
            except Exception as exc:
                log.exception("fetching and loading artifact %s failed", args[0])
                self._fail_all(args[1], f"internal error while loading: {exc}")

        parallel_map(job, jobs, FETCH_WORKERS)

    def _read_entries(self, store: Store) -> Dict[str, StoreEntry]:
        """Each model's entry for this processor, retrying an unreachable store until it answers (or stop())."""
        processor = self.settings.processor
        pending = list(self.records)
        found: Dict[str, StoreEntry] = {}
        delay = FIRST_RETRY_S
        for model_id in pending:
            self._set_detail(model_id, f"reading its entry from {store.uri}")

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
                    with self._lock:
                        self.records[model_id].entry = result  # its metadata is known before it loads
                elif result is None:
                    self._fail(model_id, f"the store {store.uri} has no entry models/{model_id}/{processor}.json: trace it for "
                                         f"{processor} (python -m tracing trace --processor {processor}) or serve it elsewhere")
                elif isinstance(result, ContractError):
                    self._fail(model_id, f"its entry is not valid: {result}")
                else:
                    retry.append((model_id, result))
            if not retry:
                break
            pending = [m for m, _ in retry]
            reason = str(retry[0][1])
            log.warning("store unreachable (%s); %d model(s) waiting; retrying in %.1f s", reason, len(pending), delay)
            for model_id in pending:
                self._set_detail(model_id, f"waiting for the store: {reason}")
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
                self._fail(model_id, reason, logged=True)
            else:
                committed[entry.artifact] = need

    def _fetch_and_load(self, store: Store, digest: str, model_ids: Sequence[str], entry: StoreEntry) -> None:
        init_inference_thread()
        settings = self.settings
        delay = FIRST_RETRY_S
        folder: Optional[Path] = None
        while folder is None:
            if self._stop.is_set():
                return
            for model_id in model_ids:
                self._set_detail(model_id, f"fetching artifact {digest}")
            try:
                if not store.exists(manifest_key(digest)):
                    self._fail_all(model_ids, f"its artifact {digest} is not in {store.uri} (or its publish did not finish): "
                                              "re-publish it with python -m tracing trace")
                    return
                folder = fetch_bundle(store, digest, settings.model_cache_dir)
            except (IntegrityError, ContractError) as exc:
                self._fail_all(model_ids, f"its artifact failed verification: {exc}")
                return
            except StoreError as exc:
                log.warning("fetching artifact %s failed (%s); retrying in %.1f s", digest, exc, delay)
                for model_id in model_ids:
                    self._set_detail(model_id, f"waiting for the store: {exc}")
                self._stop.wait(delay)
                delay = min(delay * 2, settings.store_retry_max_s)
            except OSError as exc:
                self._fail_all(model_ids, f"cannot write the bundle into MODEL_CACHE_DIR {settings.model_cache_dir}: {exc}")
                return
        for model_id in model_ids:
            self._set_detail(model_id, f"loading artifact {digest}")
        started = time.monotonic()
        try:
            artifact = load_artifact(folder, digest, entry, settings)
        except Exception as exc:
            log.exception("loading artifact %s failed", digest)
            self._fail_all(model_ids, f"cannot load its artifact {folder}: {exc}")
            return
        with self._lock:
            for model_id in model_ids:
                record = self.records[model_id]
                record.entry, record.artifact = entry, artifact
                record.state, record.detail = READY, "ready"
        log.info("model(s) %s ready: artifact %s, %s, sequence length %d, loaded and warmed up in %.2f s",
                 ", ".join(model_ids), digest[:12], artifact.task, artifact.sequence_length, time.monotonic() - started)
        self._changed()

    # ---- state changes ----
    def _set_detail(self, model_id: str, detail: str) -> None:
        with self._lock:
            record = self.records[model_id]
            if record.state == LOADING:
                record.detail = detail

    def _fail(self, model_id: str, reason: str, logged: bool = False) -> None:
        with self._lock:
            record = self.records[model_id]
            record.state, record.detail = FAILED, reason
        if not logged:
            log.error("model %s failed: %s", model_id, reason)
        self._changed()

    def _fail_all(self, model_ids: Sequence[str], reason: str) -> None:
        for model_id in model_ids:
            self._fail(model_id, reason)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


def load_artifact(folder: Path, digest: str, entry: StoreEntry, settings: Settings) -> LoadedArtifact:
    """Load a fetched bundle on this server's processor and warm it up."""
    label = str(folder / "manifest.json")
    manifest = parse(BundleManifest, json.loads((folder / "manifest.json").read_text(encoding="utf-8")), label)
    if manifest.task != entry.task:
        raise ValueError(f"the entry says {entry.task} but the bundle's manifest says {manifest.task}: re-trace the model")
    processor = settings.processor
    if manifest.processor != processor:
        raise ValueError(f"the bundle was traced for {manifest.processor}, this server runs {processor}")
    if processor == "inf1":
        import torch_neuron  # noqa: F401  (registers the Neuron ops the artifact calls)
    elif processor == "inf2":
        import torch_neuronx  # noqa: F401
    device = "cuda" if processor == "gpu" else "cpu"
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; it is what the bundles hold
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(folder / manifest.model_file), map_location=device)
    module.eval()
    encoder = TextEncoder(folder, manifest.sequence_length, question_answering=manifest.task == "question-answering")
    fixed = manifest.batch_size if processor in ("inf1", "inf2") else None
    artifact = LoadedArtifact(digest, folder, manifest, module, encoder, device, fixed)
    artifact.warm_up(settings.max_batch_size)
    return artifact


def init_inference_thread() -> None:
    """Each inference thread runs one intra-op thread: on a cpu slice, one stream per core (NOTES.md: two OpenMP
    threads per stream stalled under load). OpenMP's thread count is per calling thread, hence once per thread."""
    torch.set_num_threads(1)


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
