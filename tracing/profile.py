"""Profile a traced bundle as it will be served: in a fresh process (tracing/measure.py), against
the eager model's outputs on fixed check sentences."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import torch

from contracts import LatencyPoint, Profile

# Sentences whose eager outputs the artifact must reproduce; pairs exercise segments and [SEP].
CHECK_TEXTS: Tuple[Tuple[str, ...], ...] = (
    ("A cat sat on the mat.",),
    ("Stock markets fell sharply on Tuesday after the central bank raised interest rates.",),
    ("Who wrote the report?", "The report was written by the platform team in Dublin last spring."),
    ("Inferentia chips serve many small models at once.",),
)
BATCHES = (1, 2, 4, 8)
MIN_COSINE = 0.999
# Logits: fp32 must match eager to rounding; reduced precision within a few hundredths.
MAX_ABS_DIFF = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 5e-2}


class ProfileFailed(RuntimeError):
    """Measuring an artifact failed, or its outputs disagree with the eager model."""


@dataclass(frozen=True)
class ProfileOptions:
    reps: int = 30
    warmup: int = 3
    threads: int = 1  # one intra-op thread per inference stream (ARCHITECTURE.md, "cpu slice")
    batches: Sequence[int] = BATCHES
    timeout_s: float = 600.0


def encode(tokenizer: Any, texts: Sequence[Tuple[str, ...]], sequence_length: int) -> Dict[str, torch.Tensor]:
    firsts = [t[0] for t in texts]
    seconds = [t[1] if len(t) > 1 else None for t in texts]
    if any(s is not None for s in seconds):
        rows = [tokenizer(a, b, padding="max_length", truncation=True, max_length=sequence_length,
                          return_tensors="pt") for a, b in zip(firsts, seconds)]
        return {k: torch.cat([r[k] for r in rows]) for k in ("input_ids", "attention_mask")}
    enc = tokenizer(firsts, padding="max_length", truncation=True, max_length=sequence_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def eager_outputs(head: torch.nn.Module, inputs: Dict[str, torch.Tensor]) -> list:
    with torch.no_grad():
        result = head(inputs["input_ids"], inputs["attention_mask"])
    return [t.detach().float() for t in (result if isinstance(result, (tuple, list)) else [result])]


def check_passes(check: Dict[str, Any], precision: str) -> Tuple[bool, float]:
    if check["metric"] == "cosine":
        return check["value"] >= MIN_COSINE, MIN_COSINE
    limit = MAX_ABS_DIFF[precision]
    return check["value"] <= limit, limit


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads available, torch {torch.__version__}"


def run_child(request: Dict[str, Any], timeout_s: float) -> Dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(request, f)
    try:
        proc = subprocess.run([sys.executable, "-m", "tracing.measure", f.name], capture_output=True, text=True,
                              timeout=timeout_s, cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        raise ProfileFailed(f"profiling {request['model_file']} took over {timeout_s:.0f} s; lower --reps") from None
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ProfileFailed(f"profiling {request['model_file']} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile_bundle(model_file: Path, processor: str, task: str, precision: str, check_inputs: Dict[str, torch.Tensor],
                   expected: list, options: ProfileOptions, model_format: str = "torchscript") -> Tuple[Profile, Dict[str, Any]]:
    """Measure the artifact (a TorchScript model.pt or an AOTInductor model.pt2, as `model_format` says); return
    its profile and the correctness check (metric, value, limit). Raises ProfileFailed when the artifact's
    outputs disagree with eager beyond the limit."""
    with tempfile.TemporaryDirectory(prefix="modelfleet-check-") as tmp:
        check_file = Path(tmp) / "check.pt"
        torch.save({**check_inputs, "expected": expected}, check_file)
        got = run_child({"model_file": str(model_file), "format": model_format, "processor": processor, "task": task,
                         "check_file": str(check_file), "threads": options.threads, "reps": options.reps,
                         "warmup": options.warmup, "batches": list(options.batches)}, options.timeout_s)
    check = dict(got["check"])
    check["passed"], check["limit"] = check_passes(check, precision)
    if not check["passed"]:
        relation = ">=" if check["metric"] == "cosine" else "<="
        raise ProfileFailed(f"{model_file}: traced outputs disagree with the eager model on {processor}: "
                            f"{check['metric']} {check['value']:.6g}, need {relation} {check['limit']}")
    by_batch = {k: LatencyPoint(**v) for k, v in got["by_batch"].items()}
    first = by_batch.get("1") or next(iter(by_batch.values()), None)
    if first is None:
        raise ProfileFailed(f"{model_file}: the artifact ran at none of the batch sizes {list(options.batches)}")
    host = round(got["host_memory_mib"], 1)
    if got["device_memory_mib"] is not None:
        device = round(got["device_memory_mib"], 1)
    elif processor == "cpu":
        device = host  # a cpu slice holds its models in host memory
    else:
        # Neuron runtimes report no per-model device memory to the process: the compiled artifact
        # (weights and instruction streams) is what is loaded onto the chip.
        device = round(model_file.stat().st_size / 2**20, 1)
    profile = Profile(device_memory_mib=device, host_memory_mib=host, latency_ms=round(first.p50_ms, 3),
                      latency_p90_ms=round(max(first.p90_ms, first.p50_ms), 3), by_batch=by_batch,
                      threads=got["threads"], source="measured", machine=machine())
    return profile, check
