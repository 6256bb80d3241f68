"""The profiling child: `python -m tracing.measure REQUEST.json` loads one bundle in a fresh
process, as a server would, and prints one JSON line of measurements.

A fresh process, so the memory that loading adds (RSS delta) is the artifact's alone and no
eager model or tracer state is resident. Runs inside the Neuron images too: Python 3.10 syntax.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from typing import Any, Dict, List

# The load test reports served percentiles, and the server charges its own memory, with these same two.
from contracts.measures import percentile, resident_memory_mib


def _timed(call, reps: int) -> List[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def _outputs(result) -> list:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def compare(task: str, got: list, expected: list) -> Dict[str, Any]:
    """Embeddings: the worst cosine similarity over the check inputs; logits: the largest absolute
    difference (sequence classification) or the worst over start and end logits (QA)."""
    import torch

    if task == "feature-extraction":
        cos = torch.nn.functional.cosine_similarity(got[0].float(), expected[0].float(), dim=-1)
        return {"metric": "cosine", "value": float(cos.min())}
    diff = max(float((g.float() - e.float()).abs().max()) for g, e in zip(got, expected))
    return {"metric": "max_abs_diff", "value": diff}


def load_model_file(path: str, model_format: str, device: str) -> Any:
    """The bundle's model as a callable, loaded as the server loads it: torch.jit.load for TorchScript,
    aoti_load_package for an AOTInductor package (compiled for its device; no compiler needed to load)."""
    import torch

    if model_format == "aoti":
        # As serving/model.py's load_aoti_package (tracing may not import serving): the package loader itself, not
        # load_package, which first builds a CPU-probe program with the compiler, as no server does.
        from torch.export.pt2_archive._package import AOTICompiledModel

        return AOTICompiledModel(torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, -1))
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; it is what the servers load
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(path, map_location=device)


def measure(req: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    processor = req["processor"]
    if processor == "inf1":
        import torch_neuron  # noqa: F401  (registers the Neuron ops the artifact calls)
    elif processor == "inf2":
        import torch_neuronx  # noqa: F401
    torch.set_num_threads(req["threads"])
    device = "cuda" if processor == "gpu" else "cpu"
    check = torch.load(req["check_file"])
    ids, mask = check["input_ids"], check["attention_mask"]
    example = (ids[:1].to(device), mask[:1].to(device))
    model_format = req.get("format", "torchscript")
    if model_format == "aoti":
        # Imported before the baseline: the server imports it once for all its packages, so it is not one model's memory.
        import torch.export.pt2_archive._package  # noqa: F401

    before = resident_memory_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        device_before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    module = load_model_file(req["model_file"], model_format, device)
    load_ms = (time.perf_counter() - start) * 1000
    with torch.no_grad():
        for _ in range(req["warmup"]):
            module(*example)
        host = resident_memory_mib() - before
        device_mib = (torch.cuda.max_memory_allocated() - device_before) / 2**20 if device == "cuda" else None

        got: List[list] = [_outputs(module(ids[i:i + 1].to(device), mask[i:i + 1].to(device))) for i in range(len(ids))]
        joined = [torch.cat([g[k].cpu() for g in got]) for k in range(len(got[0]))]
        result = compare(req["task"], joined, check["expected"])

        by_batch: Dict[str, Dict[str, float]] = {}
        for batch in req["batches"]:
            inputs = (example[0].repeat(batch, 1), example[1].repeat(batch, 1))
            try:
                module(*inputs)
            except Exception:  # a fixed-shape (Neuron) artifact takes only its traced batch
                continue
            samples = _timed(lambda inputs=inputs: module(*inputs), req["reps"])
            by_batch[str(batch)] = {"p50_ms": statistics.median(samples), "p90_ms": percentile(samples, 0.9)}
    return {"host_memory_mib": host, "device_memory_mib": device_mib, "load_ms": load_ms,
            "by_batch": by_batch, "check": result, "threads": req["threads"]}


def main(argv: List[str]) -> int:
    with open(argv[0]) as f:
        req = json.load(f)
    print(json.dumps(measure(req)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
