"""One loaded model artifact: its forward on this server's processor (trimmed to the batch's longest row on cpu
and gpu, padded to the traced batch on Neuron) and the task's post-processing of its outputs into the
/predictions answer (embeddings; labels and scores; answer spans).

The data plane decides what may run (model state, input rules) and queues rows through a batcher; this module
only runs and shapes.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from tokenizers import Encoding

from contracts import BundleManifest, StoreEntry, parse
from contracts.tasks import FEATURE_EXTRACTION, OUTPUT_NAMES, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION
from serving.text import TextEncoder

# Trimmed lengths are multiples of this, so a handful of shapes recur (allocator reuse, steady timings).
TRIM_MULTIPLE = 8
NO_ANSWER_LOGIT = -1e4
MAX_ANSWER_TOKENS = 30


def served_length(mask: np.ndarray, sequence_length: int) -> int:
    """How far a batch runs on a cpu or gpu artifact: its longest row, rounded up to TRIM_MULTIPLE,
    at most the traced length."""
    longest = int(mask.sum(axis=1).max()) if mask.size else 0
    return min(sequence_length, max(TRIM_MULTIPLE, -(-longest // TRIM_MULTIPLE) * TRIM_MULTIPLE))


def init_inference_thread() -> None:
    """Each inference thread runs one intra-op thread: on a cpu slice, one stream per core (NOTES.md: two OpenMP
    threads per stream stalled under load). OpenMP's thread count is per calling thread, hence once per thread."""
    torch.set_num_threads(1)


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

    # ---- inputs ----
    def pad_to_traced_length(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Any:
        """int64 rows [n, sequence_length] from checked rows [n, seq <= sequence_length]: the tail is the
        tokenizer's padding, masked out."""
        rows, seq = input_ids.shape
        if seq == self.sequence_length:
            return input_ids.astype(np.int64, copy=False), attention_mask.astype(np.int64, copy=False)
        ids = np.full((rows, self.sequence_length), self.encoder.pad_id, dtype=np.int64)
        mask = np.zeros((rows, self.sequence_length), dtype=np.int64)
        ids[:, :seq] = input_ids
        mask[:, :seq] = attention_mask
        return ids, mask

    # ---- forward ----
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
        if length == ids.shape[1] or self.task != QUESTION_ANSWERING:
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

    # ---- outputs ----
    def tensors(self, outputs: Sequence[np.ndarray], sequence: int) -> Dict[str, np.ndarray]:
        """The v2 answer: outputs by name, per-token ones (QA logits) cut back to the request's sequence length."""
        named = dict(zip(self.output_names, outputs))
        if self.task == QUESTION_ANSWERING:
            named = {name: out[:, :sequence] for name, out in named.items()}
        return named

    def postprocess(self, outputs: Sequence[np.ndarray], encodings: Sequence[Encoding],
                    contexts: Optional[Sequence[str]]) -> Dict[str, Any]:
        """The /predictions answer for the task: embeddings; labels and scores; or one answer span per question
        (contexts: one per question, required for question answering)."""
        named = dict(zip(self.output_names, outputs))
        if self.task == FEATURE_EXTRACTION:
            return {"embeddings": named["embedding"].tolist()}
        if self.task == SEQUENCE_CLASSIFICATION:
            labels, scores = classify(named["logits"], self.labels)
            return {"labels": labels, "scores": scores}
        assert contexts is not None
        return {"answers": [best_answer(start, end, encoding, context) for start, end, encoding, context
                            in zip(named["start_logits"], named["end_logits"], encodings, contexts)]}


def aoti_max_batch(compiler_args: Sequence[str]) -> Optional[int]:
    """The largest batch an AOTInductor package takes, from its manifest's compiler_args (`batch=1..N`, as
    tracing/aoti.py records it); None when it is not recorded."""
    for arg in compiler_args:
        name, _, value = arg.partition("=")
        _, dots, high = value.partition("..")
        if name == "batch" and dots and high.isdigit():
            return int(high)
    return None


def load_module(path: Path, model_format: str, device: str, runners: int = 1) -> Any:
    """The bundle's model file as a callable of (input_ids, attention_mask), by the manifest's format. An AOTInductor
    package is loaded with one runner per inference thread: a runner serves one call at a time, and the runners share
    the package's weights. Loading needs only torch (no compiler): the package holds the compiled shared library."""
    if model_format == "aoti":
        return load_aoti_package(path, runners)
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; Neuron artifacts and older bundles are it
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def load_aoti_package(path: Path, runners: int) -> Any:
    """AOTInductor's package loader, called directly. torch's load_package first compares this CPU's vector ISA with
    the compiling machine's by building a probe program with the C++ compiler; the serving images have none, so that
    step fails and load_package falls back to this same loader, logging that the package is "outdated" (it is not)."""
    from torch.export.pt2_archive._package import AOTICompiledModel

    loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, max(1, runners), -1)
    return AOTICompiledModel(loader)


def load_artifact(folder: Path, digest: str, entry: StoreEntry, processor: str, max_batch_size: int,
                  runners: int = 1) -> LoadedArtifact:
    """Load a fetched bundle on this server's processor (`runners`: the inference threads that may call it at once)
    and warm it up."""
    label = str(folder / "manifest.json")
    manifest = parse(BundleManifest, json.loads((folder / "manifest.json").read_text(encoding="utf-8")), label)
    if manifest.task != entry.task:
        raise ValueError(f"the entry says {entry.task} but the bundle's manifest says {manifest.task}: re-trace the model")
    if manifest.processor != processor:
        raise ValueError(f"the bundle was traced for {manifest.processor}, this server runs {processor}")
    if processor == "inf1":
        import torch_neuron  # noqa: F401  (registers the Neuron ops the artifact calls)
    elif processor == "inf2":
        import torch_neuronx  # noqa: F401
    device = "cuda" if processor == "gpu" else "cpu"
    if manifest.format == "aoti":
        limit = aoti_max_batch(manifest.compiler_args)
        if limit is None or max_batch_size > limit:
            took = f"batches of up to {limit}" if limit else "no recorded batch range (compiler_args has no batch=1..N)"
            raise ValueError(f"MAX_BATCH_SIZE is {max_batch_size} but its AOTInductor package takes {took}: lower "
                             f"MAX_BATCH_SIZE or re-trace it with --format aoti --max-batch {max_batch_size} (or more)")
    module = load_module(folder / manifest.model_file, manifest.format, device, runners)
    encoder = TextEncoder(folder, manifest.sequence_length, question_answering=manifest.task == QUESTION_ANSWERING)
    fixed = manifest.batch_size if processor in ("inf1", "inf2") else None
    artifact = LoadedArtifact(digest, folder, manifest, module, encoder, device, fixed)
    artifact.warm_up(max_batch_size)
    return artifact


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
