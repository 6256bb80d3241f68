"""`python -m bench.packing [--out bench/results/packing.json] [--quick]`: the planner against
first-fit decreasing by price (how Karpenter-style packers do it) and the reference design's
fixed packing (19 models per chip on inf1.6xlarge).

Scenarios: (a) the seed scenario (3,040 bert-base-cased on inf1, --max-device-memory-gib 7.4)
restricted to inf1.6xlarge, (b) the same over the full catalogue, (c) a mixed catalogue of 3,040
models over config/profiles.yaml (all processors, Zipf traffic, seed 7), the same with a 100 ms
p90 budget on every model (c-100) and with 50/100/250 ms budgets drawn evenly (c-tiered), and (d) a mixed
catalogue of 100,000 models (seed 11), written to a .json file first; its planner time includes
loading that file and resolving profiles. `--quick` runs all but (d). Each plan is also checked by
the independent ../shared/tools/check_plan.py. Results go to --out (JSON) and beside it as
Markdown (.md); the table is printed too.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty
from typing import Any, Callable, Dict, List, Optional

import yaml
from rich.console import Console
from rich.table import Table

import contracts
from contracts import InstanceCatalogue, ModelCatalogue, ReferenceProfiles
from packing.generate import mixed_catalogue, seed_scenario, write_catalogue
from packing.model.demand import build_demand
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes
from packing.planner import plan_servers
from packing.solve.baselines import BaselineResult, first_fit_decreasing_by_price, reference_fixed_packing

ROOT = Path(__file__).resolve().parents[1]
INSTANCES = ROOT / "config" / "instances.yaml"
REFERENCE = ROOT / "config" / "profiles.yaml"
CHECK_PLAN = Path(os.environ.get("MODELFLEET_CHECK_PLAN", ROOT.parent / "shared" / "tools" / "check_plan.py"))
CHECK_TIMEOUT_S = 60.0  # the checker parses with pure-Python YAML: more than 7 minutes on 100,000 models
SMALL_CHECK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    models: int
    opts: PackingOptions
    build: Callable[[], Dict[str, Any]]
    use_reference: bool  # resolve profiles against config/profiles.yaml, as `packing plan` would
    from_file: bool  # write the catalogue to .json and time loading it


def scenarios(time_limit: float, time_limit_large: float, large_models: int, quick: bool) -> List[Scenario]:
    seed_opts = PackingOptions(max_utilization=0.83, max_device_memory_gib=7.4, time_limit_s=time_limit)
    out = [
        Scenario("a", "seed, inf1.6xlarge only", 3040,
                 PackingOptions(max_utilization=0.83, max_device_memory_gib=7.4, only_instance_types=("inf1.6xlarge",),
                                time_limit_s=time_limit),
                 seed_scenario, False, False),
        Scenario("b", "seed, full catalogue", 3040, seed_opts, seed_scenario, False, False),
        Scenario("c", "mixed 3,040 (zipf, seed 7)", 3040, PackingOptions(time_limit_s=time_limit),
                 lambda: mixed_catalogue(3040, seed=7, traffic="zipf"), True, False),
        # The same catalogue with latency budgets: one for all, and a tiered mix, so the price of a
        # budget is (c-100) or (c-tiered) against (c).
        Scenario("c-100", "mixed 3,040, every p90 budget 100 ms", 3040, PackingOptions(time_limit_s=time_limit),
                 lambda: mixed_catalogue(3040, seed=7, traffic="zipf", slo_fraction=1.0, slo_budgets=[100.0]), True, False),
        Scenario("c-tiered", "mixed 3,040, p90 budgets 50/100/250 ms", 3040, PackingOptions(time_limit_s=time_limit),
                 lambda: mixed_catalogue(3040, seed=7, traffic="zipf", slo_fraction=1.0, slo_budgets=[50.0, 100.0, 250.0]),
                 True, False),
    ]
    if not quick:
        out.append(Scenario("d", f"mixed {large_models:,} (zipf, seed 11)", large_models,
                            PackingOptions(time_limit_s=time_limit_large),
                            lambda: mixed_catalogue(large_models, seed=11, traffic="zipf"), True, True))
    return out


def _checker_instances(path: Path) -> Path:
    """check_plan.py reads device_memory_gib of every server's type, cpu ones too (where it is
    unused): its copy of the catalogue gets one. The planner never sees it."""
    data = yaml.safe_load(INSTANCES.read_text(encoding="utf-8"))
    for t in data["instances"]:
        if t["processor"] == "cpu":
            t.setdefault("device_memory_gib", t["memory_gib"])
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_checker(models_path: Path, instances_path: Path, plan_path: Path, opts: PackingOptions,
                timeout: float) -> Dict[str, Any]:
    if not CHECK_PLAN.is_file():
        return {"status": "skipped", "detail": f"{CHECK_PLAN} not found"}
    max_dev_mib = opts.max_device_memory_gib * 1024 if opts.max_device_memory_gib is not None else 0
    cmd = [sys.executable, str(CHECK_PLAN), str(models_path), str(instances_path), str(plan_path),
           repr(opts.max_utilization), repr(max_dev_mib)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "detail": f"check_plan.py took more than {timeout:.0f} s",
                "seconds": round(time.perf_counter() - start, 1)}
    seconds = round(time.perf_counter() - start, 1)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0:
        return {"status": "failed", "detail": (last or proc.stderr.strip()[-500:]), "seconds": seconds}
    return {"status": "ok", "detail": last, "seconds": seconds}


def _baseline(b: Optional[BaselineResult]) -> Optional[Dict[str, Any]]:
    if b is None:
        return None
    return {"name": b.name, "cost_per_hour": round(b.cost_per_hour, 4), "seconds": round(b.seconds, 3),
            "instances": b.instances, "pods": b.pods}


def _ratio(a: float, b: Optional[float]) -> Optional[float]:
    return round(a / b, 4) if b else None


def _plan_child(data: Optional[Dict[str, Any]], models_path: str, use_reference: bool, opts: PackingOptions,
                plan_path: str, queue: Any, instances_path: str = str(INSTANCES)) -> None:
    """The planner, in a process of its own so that a run past the wall-clock cap can be stopped.
    Its time: parsing `data` (or loading `models_path` when data is None), resolving profiles and
    `plan_servers`."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # HiGHS prints its banner straight to stdout; the parent's table stays clean
    try:
        catalogue = contracts.load(InstanceCatalogue, instances_path)
        reference = contracts.load(ReferenceProfiles, REFERENCE) if use_reference else None
        start = time.perf_counter()
        if data is None:
            models = contracts.load(ModelCatalogue, models_path).models
        else:
            models = contracts.parse(ModelCatalogue, data, Path(models_path).name).models
        profiles, sources = resolve_profiles(models, reference)
        loaded = time.perf_counter() - start
        result = plan_servers(models, profiles, sources, catalogue, opts, progress=lambda msg: queue.put(("progress", msg)))
        seconds = time.perf_counter() - start
        contracts.write_json_atomic(plan_path, result.plan.to_json_dict())
        queue.put(("done", {"seconds": seconds, "load_seconds": loaded}))
    except Exception as exc:  # reported by the parent, which carries on with the other scenarios
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def run_planner(data: Optional[Dict[str, Any]], models_path: Path, use_reference: bool, opts: PackingOptions,
                plan_path: Path, wall_limit: float, say: Callable[[str], None],
                instances: Path = INSTANCES) -> Dict[str, Any]:
    """`_plan_child` over the instance catalogue `instances` (config/instances.yaml unless given)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_plan_child,
                        args=(data, str(models_path), use_reference, opts, str(plan_path), queue, str(instances)),
                        daemon=True)
    started = time.perf_counter()
    child.start()
    outcome: Dict[str, Any] = {"status": "crashed"}
    while True:
        try:
            kind, payload = queue.get(timeout=0.5)
        except Empty:
            if not child.is_alive():
                outcome = {"status": "crashed", "detail": f"the planner's process exited with {child.exitcode}"}
                break
            if time.perf_counter() - started > wall_limit:
                child.terminate()
                outcome = {"status": "timeout", "detail": f"no plan after {wall_limit:.0f} s wall clock (stopped)"}
                break
            continue
        if kind == "progress":
            say(payload)
        elif kind == "done":
            outcome = {"status": "ok", **payload}
            break
        else:
            outcome = {"status": "error", "detail": payload}
            break
    child.join(30)
    outcome["wall_seconds"] = round(time.perf_counter() - started, 3)
    return outcome


def write_models(data: Dict[str, Any], folder: Path, from_file: bool) -> Path:
    """The scenario's models as folder/models.json, for the planner and the checker (JSON is YAML too: the checker
    reads it with yaml.safe_load); written as the catalogue writer does where the planner's time includes loading it."""
    path = folder / "models.json"
    if from_file:
        write_catalogue(data, path)
    else:
        path.write_text(json.dumps(data), encoding="utf-8")
    return path


def run_scenario(sc: Scenario, catalogue: InstanceCatalogue, reference: ReferenceProfiles, workdir: Path,
                 wall_limit: float, say: Callable[[str], None]) -> Dict[str, Any]:
    here = workdir / sc.key
    here.mkdir(parents=True, exist_ok=True)
    say(f"({sc.key}) {sc.title}: generating {sc.models:,} models")
    data = sc.build()
    models_path = write_models(data, here, sc.from_file)

    say(f"({sc.key}) {sc.title}: planning")
    plan_path = here / "plan.json"
    run = run_planner(None if sc.from_file else data, models_path, sc.use_reference, sc.opts, plan_path, wall_limit,
                      lambda msg: say(f"({sc.key}) {sc.title}: {msg}"))

    say(f"({sc.key}) {sc.title}: first-fit decreasing by price")
    start = time.perf_counter()
    models = contracts.parse(ModelCatalogue, data, f"scenario {sc.key}").models
    profiles, _ = resolve_profiles(models, reference if sc.use_reference else None)
    demand = build_demand(models, profiles, node_shapes(catalogue, sc.opts), sc.opts)
    shapes = demand.shapes  # one per instance type and SLO tier
    inputs_seconds = time.perf_counter() - start
    platform_cost = float(sum(catalogue.platform.values()))
    ffd = first_fit_decreasing_by_price(demand, shapes, sc.opts, platform_cost)
    ref = reference_fixed_packing(demand, shapes, sc.opts, platform_cost)

    planner: Dict[str, Any] = {"status": run["status"], "wall_seconds": run["wall_seconds"],
                               "time_limit_s": sc.opts.time_limit_s}
    ratios: Dict[str, Optional[float]] = {"planner_over_ffd": None, "planner_over_reference": None, "bound_over_ffd": None}
    if run["status"] == "ok":
        say(f"({sc.key}) {sc.title}: independent check of the plan")
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        planner.update({
            "seconds": round(run["seconds"], 3), "load_seconds": round(run["load_seconds"], 3),
            "solve_seconds": plan["solve_seconds"], "cost_per_hour": plan["cost_per_hour"],
            "lower_bound_per_hour": plan["lower_bound_per_hour"], "gap": plan["gap"],
            "platform_per_hour": plan["platform_per_hour"], "instances": plan["instances"],
            "servers": len(plan["servers"]), "pods": sum(s["replicas"] for s in plan["servers"]), "solver": plan["solver"],
        })
        ratios = {"planner_over_ffd": _ratio(plan["cost_per_hour"], ffd.cost_per_hour),
                  "planner_over_reference": _ratio(plan["cost_per_hour"], ref.cost_per_hour if ref else None),
                  "bound_over_ffd": _ratio(plan["lower_bound_per_hour"], ffd.cost_per_hour)}
        check = run_checker(models_path, _checker_instances(here / "instances.yaml"), plan_path, sc.opts,
                            CHECK_TIMEOUT_S if sc.from_file else SMALL_CHECK_TIMEOUT_S)
    else:
        planner["detail"] = run.get("detail", "")
        check = {"status": "skipped", "detail": "no plan"}

    return {
        "key": sc.key, "title": sc.title, "models": len(models),
        "instance_types": sorted({s.name for s in shapes}),
        "slo_tiers": len(shapes),
        "options": {"max_utilization": sc.opts.max_utilization, "max_device_memory_gib": sc.opts.max_device_memory_gib,
                    "memory_headroom": sc.opts.memory_headroom, "min_replicas": sc.opts.min_replicas,
                    "only_instance_types": list(sc.opts.only_instance_types) if sc.opts.only_instance_types else None,
                    "time_limit_s": sc.opts.time_limit_s},
        "planner": planner,
        "ffd": {**_baseline(ffd), "inputs_seconds": round(inputs_seconds, 3)},
        "reference": _baseline(ref),
        "ratios": ratios,
        "check": check,
    }


# -- output ------------------------------------------------------------------------------------

COLUMNS = ["scenario", "models", "planner $/h", "bound $/h", "gap", "planner s", "FFD $/h", "FFD s",
           "planner/FFD", "reference $/h", "check"]


def _money(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:,.2f}"


def _planner_seconds(p: Dict[str, Any]) -> str:
    if p["status"] == "ok":
        return f"{p['seconds']:.1f}"
    return f"> {p['wall_seconds']:.0f} ({p['status']})"


def row(r: Dict[str, Any]) -> List[str]:
    p, f, ref, ratios = r["planner"], r["ffd"], r["reference"], r["ratios"]
    check = r["check"]["status"] + (f" ({r['check']['detail']})" if r["check"]["status"] != "ok" else "")
    ratio = "—" if ratios["planner_over_ffd"] is None else f"{ratios['planner_over_ffd']:.3f}"
    gap = f"{p['gap']:.2%}" if "gap" in p else "—"
    return [f"({r['key']}) {r['title']}", f"{r['models']:,}", _money(p.get("cost_per_hour")),
            _money(p.get("lower_bound_per_hour")), gap, _planner_seconds(p), _money(f["cost_per_hour"]),
            f"{f['seconds']:.2f}", ratio, _money(ref["cost_per_hour"] if ref else None), check]


def markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Packing benchmark",
        "",
        f"{report['created_at']} on {m['cpu_model'] or m['processor'] or m['machine']} ({m['cpu_count']} CPUs), Python {m['python']}.",
        "`python -m bench.packing`. $/h include the platform's fixed costs. Planner s: wall time of parsing the",
        "catalogue (for the large case: loading its .json file), resolving profiles and `plan_servers`, against",
        "the planner's own time limit (10 s; 100 s for the large case); the run is stopped at a wall-clock cap.",
        "FFD: first-fit decreasing by price per pod slot; its time is the packing alone, over the same demand",
        "model. Reference: 19 models per chip on inf1.6xlarge, where every model fits that. Check:",
        "../shared/tools/check_plan.py on the planner's plan. Figures from a shared 2-core machine are noisy.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
    ]
    for r in report["scenarios"]:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row(r)) + " |")
    by_key = {r["key"]: r for r in report["scenarios"]}
    free = by_key.get("c", {}).get("planner", {})
    if "cost_per_hour" in free:
        lines.append("")
        lines.append("The price of a budget, against (c), the same catalogue without one:")
        lines.append("")
        for key in ("c-100", "c-tiered"):
            p = by_key.get(key, {}).get("planner", {})
            if "cost_per_hour" in p:
                lines.append(f"- ({key}) {p['cost_per_hour'] / free['cost_per_hour'] - 1:+.1%} in cost, "
                             f"{p['lower_bound_per_hour'] / free['lower_bound_per_hour'] - 1:+.1%} in bound "
                             f"({by_key[key]['slo_tiers']} shapes after splitting instance types into SLO tiers)")
    lines.append("")
    lines.append("Instances:")
    lines.append("")
    for r in report["scenarios"]:
        inst = ", ".join(f"{n} x {t}" for t, n in r["planner"].get("instances", {}).items()) or r["planner"].get("detail", "")
        ffd = ", ".join(f"{n} x {t}" for t, n in r["ffd"]["instances"].items())
        lines.append(f"- ({r['key']}) planner: {inst}; FFD: {ffd}")
    lines.append("")
    lines.append("Where the bound comes from (the reported bound is the largest of the last three):")
    lines.append("")
    for r in report["scenarios"]:
        sol = r["planner"].get("solver")
        if sol:
            lines.append(f"- ({r['key']}) {sol['name']}, {sol['classes']} classes, {sol['rounds']} rounds, "
                         f"{sol['columns']} columns: LP {_money(sol['lp_per_hour'])}, fluid relaxation "
                         f"{_money(sol['fluid_per_hour'])}, configuration LP (Farley) "
                         f"{_money(sol.get('config_bound_per_hour'))}, fluid with whole nodes "
                         f"{_money(sol.get('whole_node_bound_per_hour'))}")
    return "\n".join(lines) + "\n"


def rich_table(report: Dict[str, Any]) -> Table:
    table = Table(title="packing: planner vs first-fit decreasing by price vs the reference design")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("scenario", "check") else "right")
    for r in report["scenarios"]:
        table.add_row(*row(r))
    return table


def _cpu_model() -> str:
    """platform.processor() is often empty on Linux: /proc/cpuinfo names the CPU there."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine() -> Dict[str, Any]:
    return {"processor": platform.processor(), "cpu_model": _cpu_model(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.packing", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/packing.json"), help="results JSON (and .md beside it)")
    parser.add_argument("--quick", action="store_true", help="only the 3,040-model scenarios (a)-(c)")
    parser.add_argument("--time-limit", type=float, default=10.0, help="planner seconds for the 3,040-model scenarios")
    parser.add_argument("--time-limit-large", type=float, default=100.0, help="planner seconds for the large scenario")
    parser.add_argument("--large-models", type=int, default=100_000, help="models in the large scenario (d)")
    parser.add_argument("--wall-limit", type=float, default=300.0,
                        help="wall-clock seconds after which a 3,040-model planner run is stopped")
    parser.add_argument("--wall-limit-large", type=float, default=900.0,
                        help="wall-clock seconds after which the large planner run is stopped")
    args = parser.parse_args(argv)

    console, err = Console(), Console(stderr=True)
    if not console.is_terminal:
        console = Console(width=220)  # a piped table keeps one line per scenario
    catalogue = contracts.load(InstanceCatalogue, INSTANCES)
    reference = contracts.load(ReferenceProfiles, REFERENCE)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp, err.status("starting") as status:
        for sc in scenarios(args.time_limit, args.time_limit_large, args.large_models, args.quick):
            started = time.perf_counter()

            def say(msg: str, started: float = started) -> None:
                status.update(f"{msg}  [dim]{time.perf_counter() - started:.0f} s[/]")

            r = run_scenario(sc, catalogue, reference, Path(tmp), args.wall_limit_large if sc.from_file else args.wall_limit, say)
            results.append(r)
            p = r["planner"]
            err.log(f"({r['key']}) {r['title']}: planner {_money(p.get('cost_per_hour'))} $/h in {_planner_seconds(p)} s, "
                    f"FFD {_money(r['ffd']['cost_per_hour'])} $/h, check {r['check']['status']}")
    report = {"schema": 1, "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "quick": args.quick, "instances": str(INSTANCES.relative_to(ROOT)), "scenarios": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contracts.write_json_atomic(args.out, report)
    md = args.out.with_suffix(".md")
    contracts.write_atomic(md, markdown(report))
    console.print(rich_table(report))
    console.print(f"results: {args.out}  table: {md}")
    failed = [r["key"] for r in results if r["check"]["status"] == "failed"]
    if failed:
        err.print(f"[bold red]check_plan.py rejects the plan of scenario(s) {', '.join(failed)}[/]")
        return 1
    broken = [r["key"] for r in results if r["planner"]["status"] in ("error", "crashed")]
    if broken:
        err.print(f"[bold red]the planner failed on scenario(s) {', '.join(broken)}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
