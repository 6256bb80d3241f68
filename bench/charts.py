"""`python -m bench.charts`: how long `python -m charts synth` takes, and how big its output is.

Two plans: the demo's 3,040-model plan (made by the planner, as `make demo` does) and a 100,000-model
plan. The large one is the 3,040-model plan's servers repeated with fresh ids until 100,000 models
(`--large-from scaled`, the default) or the planner's own plan of a generated catalogue
(`--large-from planner`). Each synth runs as the command does, in a fresh process; the figures are
wall time, peak memory of the process tree and the output's sizes from dist/summary.json."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent


def run(args: List[str], env: Optional[Dict[str, str]] = None, timeout: int = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def planner_plan(work: Path, models: int, seed: int, time_limit: float) -> Path:
    cat = work / f"models-{models}.{'json' if models > 10_000 else 'yaml'}"
    plan = work / f"plan-{models}.json"
    r = run(["-m", "packing", "generate", "--kind", "mixed", "--models", str(models), "--seed", str(seed),
             "--traffic", "zipf", "--out", str(cat)])
    if r.returncode:
        raise SystemExit(f"generate failed: {r.stderr[-2000:]}")
    r = run(["-m", "packing", "plan", "--models", str(cat), "--reference-profiles", "config/profiles.yaml",
             "--out", str(plan), "--time-limit", str(time_limit), "--quiet"])
    if r.returncode:
        raise SystemExit(f"plan of {models} models failed: {r.stderr[-2000:]}")
    return plan


def scaled_plan(small: Path, models: int, out: Path) -> Path:
    """The small plan's servers repeated (ids suffixed per copy) until `models` models."""
    base = json.loads(small.read_text())
    servers: List[Dict[str, Any]] = []
    total, copy = 0, 0
    while total < models:
        for s in base["servers"]:
            if total >= models:
                break
            keep = s["models"][: models - total]
            servers.append({**s, "id": f"{s['id']}-{copy:02d}", "models": [f"{m}-{copy:02d}" for m in keep]})
            total += len(keep)
        copy += 1
    out.write_text(json.dumps({**base, "servers": servers, "profile_sources": {}}))
    return out


def run_measured(args: List[str], env: Dict[str, str]) -> tuple:
    """Run a command; return (CompletedProcess, wall seconds, peak RSS of its whole process tree in MiB)."""
    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=err, text=True,
                                env={**os.environ, **env})
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read())
    return done, wall, round(peak / 2**20)


def synth(plan: Path, out: Path, node_options: str = "", repeats: int = 1) -> Dict[str, Any]:
    """Best (and all) of `repeats` runs: the machine is shared, so the load average goes with each."""
    env = {"NODE_OPTIONS": node_options} if node_options else {}
    walls, loads = [], []
    for _ in range(repeats):
        loads.append(round(os.getloadavg()[0], 1))
        r, wall, peak = run_measured(["-m", "charts", "synth", "--plan", str(plan), "--config", "config/dev.yaml",
                                      "--out", str(out), "--quiet"], env)
        walls.append(round(wall, 2))
        if r.returncode:
            break
    wall = min(walls)
    if r.returncode:
        return {"ok": False, "wall_s": round(wall, 2), "error": r.stderr[-1500:], "node_options": node_options}
    summary = json.loads((out / "summary.json").read_text())
    files = [p for p in out.rglob("*") if p.is_file()]
    shards = summary["shards"]
    return {
        "ok": True, "node_options": node_options or None, "wall_s": wall, "walls_s": walls,
        "load_average_1m_before": loads, "synth_s": summary["seconds"],
        "peak_rss_mib_process_tree": peak, "jobs": min(4, os.cpu_count() or 1),
        "servers": summary["servers"], "models": summary["models"], "objects": summary["objects"],
        "largest_object": summary["largest_object"], "largest_object_kib": round(summary["largest_object_bytes"] / 1024, 1),
        "helm_shards": len(shards),
        "largest_shard_templates_kib": round(max(s["template_bytes"] for s in shards) / 1024, 1),
        "largest_release_secret_kib_estimate": round(max(s["release_secret_bytes_estimate"] for s in shards) / 1024, 1),
        "dist_mib": round(sum(p.stat().st_size for p in files) / 2**20, 1), "dist_files": len(files),
        "stdout": r.stdout.strip(),
    }


def markdown(res: Dict[str, Any]) -> str:
    rows = ["| plan | models | servers | objects | synth wall (s) | peak RSS all (MiB) | Helm shards | largest release (KiB, est.) "
            "| largest object | dist (MiB) |", "|" + " --- |" * 10]
    for name, r in res["runs"].items():
        if not r["ok"]:
            rows.append(f"| {name} | failed: {r['error'].splitlines()[-1] if r['error'] else ''} |")
            continue
        runs = ", ".join(f"{w} s at load {ld}" for w, ld in zip(r["walls_s"], r["load_average_1m_before"]))
        rows.append(f"| {name} | {r['models']:,} | {r['servers']:,} | {r['objects']:,} | {r['wall_s']} ({runs}) | "
                    f"{r['peak_rss_mib_process_tree']} | {r['helm_shards']} | {r['largest_release_secret_kib_estimate']} of 1024 | "
                    f"{r['largest_object']} {r['largest_object_kib']} KiB | {r['dist_mib']} |")
    return (f"# charts synth benchmark\n\n{res['machine']}; `python -m bench.charts`. Wall time is the whole command "
            "(Python and Node start-up included; best of the runs, each with the 1-minute load average of this shared "
            "2-core machine before it), default `--jobs` (one per CPU, at most 4); NODE_OPTIONS: "
            f"{res['node_options'] or 'none needed'}.\n\n" + "\n".join(rows) + "\n\n" + res["notes"] + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.charts", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("bench/results/charts.json"))
    p.add_argument("--small-plan", type=Path, default=None, help="a 3,040-model plan (default: made here like make demo)")
    p.add_argument("--large-models", type=int, default=100_000)
    p.add_argument("--large-from", choices=("scaled", "planner"), default="scaled")
    p.add_argument("--node-options", default="", help="NODE_OPTIONS for the large synth")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-charts-") as tmp:
        work = Path(tmp)
        small = args.small_plan or planner_plan(work, 3040, 7, 20)
        large = (planner_plan(work, args.large_models, 7, 60) if args.large_from == "planner"
                 else scaled_plan(small, args.large_models, work / "plan-large.json"))
        runs = {"3,040 models (planner)": synth(small, work / "dist-small", repeats=3),
                f"{args.large_models:,} models ({args.large_from})": synth(large, work / "dist-large", args.node_options)}
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
           "node_options": args.node_options or None, "runs": runs,
           "notes": ("Helm release size: base64(gzip(JSON of the shard's templates, values and rendered manifest)), "
                     "the Secret Helm keeps per release (limit 1 MiB); shards hold at most 200 KiB of templates.")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0 if all(r["ok"] for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
