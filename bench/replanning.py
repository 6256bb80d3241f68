"""`python -m bench.replanning [--steps 30] [--time-limit 10] [--out bench/results/replanning.json]`:
re-planning under churn against planning from scratch.

A 3,040-model mixed catalogue (config/profiles.yaml, every processor, Zipf traffic, seed 7) is
planned once; then each of `--steps` steps changes 1% of it (a third of that retired, a third
added from a reserve of the same catalogue, a third with its traffic scaled by 0.5-2x) and is
planned three ways: from scratch; with `--previous` (no consolidation: only forced moves); and with
`--previous --move-cost` (consolidation when a move pays). Each re-plan starts from its own
previous plan. Per step: $/h, models moved (a model in both plans on servers of different ids; a
fresh plan renumbers its servers, so its count is what a promotion of it would roll), servers
restarted, seconds, and the independent checker's verdict. Results: JSON, Markdown and a PNG.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import yaml

from contracts import InstanceCatalogue, ModelCatalogue, Plan, load, parse
from packing.generate import mixed_catalogue
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions
from packing.planner import plan_servers
from packing.replanner import MoveBudget, replan
from packing.report.diff import plan_diff

ROOT = Path(__file__).resolve().parents[1]
INSTANCES = ROOT / "config" / "instances.yaml"
CHECK_PLAN = ROOT.parent / "shared" / "tools" / "check_plan.py"
MODELS = 3040
CHURN = 0.01
SEED = 7
MOVE_COST = 0.01  # $/h per moved model: moving 100 models must save $1/h
POLICIES = ("fresh", "replan", "replan+move-cost")


def churn(models: List[dict], reserve: List[dict], rng: np.random.Generator, share: float) -> List[dict]:
    """One step: retire, add and re-weigh a third of `share` of the catalogue each."""
    k = max(1, round(share * len(models) / 3))
    retired = set(rng.choice(len(models), size=k, replace=False).tolist())
    out = [dict(m) for i, m in enumerate(models) if i not in retired]
    for i in rng.choice(len(out), size=k, replace=False).tolist():
        out[i] = {**out[i], "rps": round(out[i]["rps"] * float(rng.uniform(0.5, 2.0)), 4)}
    out.extend(reserve.pop(0) for _ in range(min(k, len(reserve))))
    return out


def check(models_yaml: Path, plan: Plan, workdir: Path) -> str:
    if not CHECK_PLAN.is_file():
        return "skipped"
    (workdir / "p.json").write_text(json.dumps(plan.to_json_dict()))
    run = subprocess.run([sys.executable, str(CHECK_PLAN), str(models_yaml), str(INSTANCES), str(workdir / "p.json"),
                          "0.83", "0"], capture_output=True, text=True, timeout=300)
    return "passed" if run.returncode == 0 else f"failed: {run.stdout.strip()[:200]}"


def one_plan(models: List[dict], catalogue: InstanceCatalogue, opts: PackingOptions, previous: Optional[Plan],
             budget: MoveBudget) -> tuple[Plan, float]:
    specs = parse(ModelCatalogue, {"models": models}, "models").models
    profiles, sources = resolve_profiles(specs)
    started = time.perf_counter()
    if previous is None:
        plan = plan_servers(specs, profiles, sources, catalogue, opts).plan
    else:
        plan = replan(previous, "0" * 64, specs, profiles, sources, catalogue, opts, budget).plan
    return plan, time.perf_counter() - started


def run(steps: int, time_limit: float, check_every: int, say) -> Dict[str, Any]:
    catalogue = load(InstanceCatalogue, INSTANCES)
    opts = PackingOptions(time_limit_s=time_limit)
    k = max(1, round(CHURN * MODELS / 3))
    every = mixed_catalogue(MODELS + k * steps, seed=SEED, traffic="zipf")["models"]
    models, reserve = every[:MODELS], every[MODELS:]
    rng = np.random.default_rng(SEED)
    start, secs = one_plan(models, catalogue, opts, None, MoveBudget())
    say(f"step 0: fresh ${start.cost_per_hour:.2f}/h in {secs:.1f} s")
    last = {p: start for p in POLICIES}
    budgets = {"replan": MoveBudget(), "replan+move-cost": MoveBudget(move_cost=MOVE_COST)}
    rows = [{"step": 0, **{p: {"cost_per_hour": start.cost_per_hour, "models_moved": 0, "servers_restarted": 0,
                                 "seconds": round(secs, 2), "check": "-"} for p in POLICIES},
             "lower_bound_per_hour": start.lower_bound_per_hour}]
    with tempfile.TemporaryDirectory() as tmp:
        for step in range(1, steps + 1):
            models = churn(models, reserve, rng, CHURN)
            row: Dict[str, Any] = {"step": step, "models": len(models)}
            checking = step % check_every == 0 or step == steps
            if checking:  # written once a step: the checker reads YAML, slowly, at this size
                models_yaml = Path(tmp) / "m.yaml"
                models_yaml.write_text(yaml.dump({"models": models}, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                                                 sort_keys=False))
            for policy in POLICIES:
                plan, secs = one_plan(models, catalogue, opts, None if policy == "fresh" else last[policy],
                                      budgets.get(policy, MoveBudget()))
                diff = plan_diff(last[policy], plan)
                verdict = check(models_yaml, plan, Path(tmp)) if checking else "-"
                row[policy] = {"cost_per_hour": plan.cost_per_hour, "models_moved": len(diff["models_moved"]),
                               "servers_restarted": diff["servers_restarted"], "seconds": round(secs, 2), "check": verdict}
                last[policy] = plan
            row["lower_bound_per_hour"] = last["fresh"].lower_bound_per_hour
            rows.append(row)
            say(f"step {step}: " + "; ".join(f"{p} ${row[p]['cost_per_hour']:.2f}/h, {row[p]['models_moved']} moved"
                                             for p in POLICIES))
    return {"created_at": datetime.now(UTC).isoformat(timespec="seconds"), "models": MODELS, "churn": CHURN,
            "steps": steps, "time_limit_s": time_limit, "move_cost": MOVE_COST, "seed": SEED, "rows": rows,
            "summary": summary(rows)}


def summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    later = rows[1:]
    out = {}
    for p in POLICIES:
        gaps = [r[p]["cost_per_hour"] / r["fresh"]["cost_per_hour"] - 1 for r in later]
        out[p] = {"total_moved": sum(r[p]["models_moved"] for r in later),
                  "total_restarted": sum(r[p]["servers_restarted"] for r in later),
                  "mean_gap_vs_fresh": float(np.mean(gaps)) if gaps else 0.0,
                  "max_gap_vs_fresh": float(np.max(gaps)) if gaps else 0.0,
                  "final_cost_per_hour": rows[-1][p]["cost_per_hour"],
                  "mean_seconds": float(np.mean([r[p]["seconds"] for r in later])) if later else 0.0,
                  "checks_failed": sum(1 for r in later if str(r[p]["check"]).startswith("failed"))}
    return out


def markdown(report: Dict[str, Any]) -> str:
    s = report["summary"]
    lines = [f"# Re-planning under churn: {report['models']:,} models, {report['steps']} steps of "
             f"{report['churn']:.0%} churn (time limit {report['time_limit_s']:g} s, move cost ${report['move_cost']}/h a model)",
             "", "| policy | models moved (total) | servers restarted (total) | mean gap vs fresh | max gap vs fresh "
             "| final $/h | mean s | checks failed |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in POLICIES:
        x = s[p]
        lines.append(f"| {p} | {x['total_moved']:,} | {x['total_restarted']:,} | {x['mean_gap_vs_fresh']:+.2%} | "
                     f"{x['max_gap_vs_fresh']:+.2%} | {x['final_cost_per_hour']:.2f} | {x['mean_seconds']:.1f} | {x['checks_failed']} |")
    lines += ["", "| step | fresh $/h | moved | replan $/h | moved | restarted | replan+move-cost $/h | moved | restarted | bound $/h |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        f, a, b = r["fresh"], r["replan"], r["replan+move-cost"]
        lines.append(f"| {r['step']} | {f['cost_per_hour']:.2f} | {f['models_moved']} | {a['cost_per_hour']:.2f} | "
                     f"{a['models_moved']} | {a['servers_restarted']} | {b['cost_per_hour']:.2f} | {b['models_moved']} | "
                     f"{b['servers_restarted']} | {r['lower_bound_per_hour']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in report["rows"]]
    fig, (cost, moves) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    for p in POLICIES:
        cost.plot(steps, [r[p]["cost_per_hour"] for r in report["rows"]], label=p, marker=".")
        moves.plot(steps, np.cumsum([r[p]["models_moved"] for r in report["rows"]]), label=p, marker=".")
    cost.plot(steps, [r["lower_bound_per_hour"] for r in report["rows"]], label="bound", linestyle=":", color="grey")
    cost.set(xlabel="step", ylabel="$/h", title="cost")
    moves.set(xlabel="step", ylabel="models moved (cumulative)", title="moves", yscale="symlog")
    cost.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replanning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per plan, fresh or re-plan")
    parser.add_argument("--check-every", type=int, default=10, help="run the independent checker every N steps (and the last)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/replanning.json"))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    report = run(args.steps, args.time_limit, args.check_every, lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(markdown(report))
    plot(report, args.out.with_suffix(".png"))
    print(markdown(report).split("\n\n")[1])
    failed = sum(x["checks_failed"] for x in report["summary"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
