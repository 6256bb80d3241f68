"""Benchmark of the CDK synth at scale: `python -m bench.stacks [--out bench/results/stacks.json]`.

Makes a 3,040-model plan (mixed catalogue, seed 7, Zipf traffic, as `make demo`, planned with
--min-replicas 2 so that prod accepts it too), then times the whole app's synth from scratch: the
`charts synth` of dev, staging and prod (processes of their own, in parallel) and the CDK app
(dev's stacks, the shared stack, the pipeline with its three stages, cdk-nag), in a process of its
own with no AWS credentials. Peak memory is the largest sum of RSS over that process tree (Python,
its jsii Node kernel, the charts processes), sampled every 50 ms. Targets: <= 60 s, <= 1 GB.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import psutil

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 60.0
TARGET_RSS_MB = 1024.0


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"})
    return env


def make_plan(work: Path, models: int) -> Path:
    cat, plan = work / "models.yaml", work / "plan.json"
    py = sys.executable
    subprocess.run([py, "-m", "packing", "generate", "--kind", "mixed", "--models", str(models), "--seed", "7",
                    "--traffic", "zipf", "--out", str(cat)], cwd=ROOT, check=True, capture_output=True)
    subprocess.run([py, "-m", "packing", "plan", "--models", str(cat), "--reference-profiles", "config/profiles.yaml",
                    "--out", str(plan), "--time-limit", "20", "--quiet", "--min-replicas", "2"],
                   cwd=ROOT, check=True, capture_output=True)
    return plan


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process that ended between the two calls
            total += p.memory_info().rss
    return total


def timed_synth(plan: Path, work: Path, run: str) -> Dict[str, float]:
    context = {f"plan.{e}": str(plan) for e in ("dev", "staging", "prod")}
    context["dist_cache"] = str(work / f"dist-{run}")
    code = ("import json, sys; from stacks.app import build_app; "
            "build_app(json.loads(sys.argv[1]), outdir=sys.argv[2]).synth()")
    out = work / f"cdk.out-{run}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(context), str(out)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"synth failed ({proc.returncode}):\n{stderr[-4000:]}")
    sizes: List[int] = [p.stat().st_size for p in out.rglob("*.template.json")]
    releases = sum(1 for _ in (work / f"dist-{run}" / "dev" / "helm").glob("servers-*"))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 2**20, 1), "templates": len(sizes),
            "largest_template_kb": round(max(sizes) / 1024, 1), "server_releases_dev": releases}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=3040)
    parser.add_argument("--plan", type=Path, help="use this plan instead of making one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stacks.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-stacks-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        plan = args.plan or make_plan(work, args.models)
        plan_s = time.perf_counter() - t0
        doc = json.loads(plan.read_text())
        cold = timed_synth(plan, work, "cold")  # charts synth included
        warm = timed_synth(plan, work, "cold")  # same dist cache: the CDK app alone
    result = {
        "plan": {"models": sum(len(s["models"]) for s in doc["servers"]), "servers": len(doc["servers"]),
                 "instances": doc["instances"], "seconds_to_plan": round(plan_s, 1)},
        "synth_with_charts": cold, "synth_cdk_only": warm,
        "targets": {"seconds": TARGET_S, "peak_rss_mb": TARGET_RSS_MB},
        "met": cold["seconds"] <= TARGET_S and cold["peak_rss_mb"] <= TARGET_RSS_MB,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
