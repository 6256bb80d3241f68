"""`python -m bench.packing_curves [--out bench/results/packing_curves.json] [--quick] [--limits 5,15,60,300]`:
what a longer time limit buys, as cost and lower bound against the planner's time.

Scenarios: (c) the mixed 3,040-model catalogue of `bench.packing` (config/profiles.yaml, every processor,
Zipf traffic, seed 7), (c-tiered) the same with p90 budgets of 50/100/250 ms drawn evenly, (fill-20) and
(fill-50) the exact-fill instances of tests/test_planner_optimality.py (items paired at random so that each
pair fills one device exactly in memory and load; the optimum is one device per pair), and, in the full run
only, (d) the mixed 100,000-model catalogue (seed 11), loaded from a .json file as `bench.packing` does.

Each scenario is planned once per time limit (default 5, 15, 60 and 300 s; `--quick`: 5, 15 and 60 s and no
(d)). One run per limit, not one long run sampled: the planner is deterministic given its limit, and its
incumbent exists only once rounding has run, at a fixed share of the limit, so a run cannot report a plan
part-way. First-fit decreasing by price (packing/solve/baselines.py) runs once per scenario beside them. Every plan
is checked by ../shared/tools/check_plan.py but the 100,000-model ones (the checker takes more than 7 minutes
on those). Results: JSON, Markdown beside it, and a plot (.png) of cost and bound against time per scenario.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

import contracts
from bench.harness import log, proc_loadavg
from bench.packing import INSTANCES, REFERENCE, SMALL_CHECK_TIMEOUT_S, machine, run_checker, run_planner, write_models
from bench.packing import _checker_instances as checker_instances_yaml
from contracts import InstanceCatalogue, ModelCatalogue, ReferenceProfiles
from packing.generate import mixed_catalogue
from packing.model.demand import build_demand
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes
from packing.solve.baselines import first_fit_decreasing_by_price
from tests.exact_fill import EXACT_CAP_GIB, EXACT_PRICE, EXACT_UTIL, exact_fill_case

ROOT = Path(__file__).resolve().parents[1]
LIMITS = (5.0, 15.0, 60.0, 300.0)
QUICK_LIMITS = (5.0, 15.0, 60.0)
# The exact-fill seeds of the optimality tests that give 20 and 50 bins.
EXACT_FILL = (("fill-20", 12, 20), ("fill-50", 14, 50))
LARGE_MODELS = 100_000
PROGRESS_EVERY_S = 30.0
LARGE_CHECK_MINUTES = 7  # measured by bench/packing.py, whose own run of the checker stops at a minute


@dataclass(frozen=True)
class CurveScenario:
    key: str
    title: str
    opts: PackingOptions  # time_limit_s is set per run
    build: Callable[[], Dict[str, Any]]
    catalogue: Optional[Dict[str, Any]]  # an instance catalogue of its own; None: config/instances.yaml
    use_reference: bool  # resolve profiles against config/profiles.yaml, as `packing plan` would
    from_file: bool  # write the models to .json and time loading them
    optimum_per_hour: Optional[float]  # known optimum, platform included, where the instance is built to have one


@dataclass(frozen=True)
class RunPoint:
    """One planner run at one time limit, as the curve needs it."""

    time_limit_s: float
    seconds: Optional[float]  # planner wall time (parsing or loading included); None if no plan
    cost_per_hour: Optional[float]
    bound_per_hour: Optional[float]


def curve_scenarios(quick: bool, large_models: int = LARGE_MODELS) -> List[CurveScenario]:
    out = [
        CurveScenario("c", "mixed 3,040 (zipf, seed 7)", PackingOptions(),
                      lambda: mixed_catalogue(3040, seed=7, traffic="zipf"), None, True, False, None),
        CurveScenario("c-tiered", "mixed 3,040, p90 budgets 50/100/250 ms", PackingOptions(),
                      lambda: mixed_catalogue(3040, seed=7, traffic="zipf", slo_fraction=1.0,
                                              slo_budgets=[50.0, 100.0, 250.0]), None, True, False, None),
    ]
    for key, seed, pairs in EXACT_FILL:
        models, catalogue = exact_fill_case(seed, pairs)
        platform = float(sum(catalogue["platform"].values()))
        out.append(CurveScenario(
            key, f"exact fill, {pairs} bins (seed {seed})",
            PackingOptions(max_utilization=EXACT_UTIL, max_device_memory_gib=EXACT_CAP_GIB),
            lambda models=models: {"models": models}, catalogue, False, False, pairs * EXACT_PRICE + platform))
    if not quick:
        out.append(CurveScenario("d", f"mixed {large_models:,} (zipf, seed 11)", PackingOptions(),
                                 lambda: mixed_catalogue(large_models, seed=11, traffic="zipf"), None, True, True, None))
    return out


def parse_limits(text: str) -> Tuple[float, ...]:
    """'5,15,60' -> (5.0, 15.0, 60.0): positive, strictly increasing seconds."""
    try:
        limits = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated seconds such as 5,15,60, got {text!r}") from None
    if not limits or any(not math.isfinite(x) or x <= 0 for x in limits):
        raise argparse.ArgumentTypeError(f"every limit must be a positive number of seconds, got {text!r}")
    if any(b <= a for a, b in zip(limits, limits[1:])):
        raise argparse.ArgumentTypeError(f"give the limits in increasing order, without repeats, got {text!r}")
    return limits


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of models is needed, such as 100000, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"the number of models must be at least 1, got {n}")
    return n


def gap(cost: Optional[float], bound: Optional[float]) -> Optional[float]:
    """(cost - bound) / cost: the share of the cost the bound does not prove necessary."""
    if cost is None or bound is None or cost <= 0:
        return None
    return (cost - bound) / cost


def best_bound(points: Sequence[RunPoint]) -> Optional[float]:
    """The largest bound of any run: each is valid for the same instance, so the largest is too."""
    bounds = [p.bound_per_hour for p in points if p.bound_per_hour is not None]
    return max(bounds) if bounds else None


def best_cost(points: Sequence[RunPoint]) -> Optional[float]:
    costs = [p.cost_per_hour for p in points if p.cost_per_hour is not None]
    return min(costs) if costs else None


def wall_limit(sc: CurveScenario, limit: float) -> float:
    """When a run is stopped: the 100,000-model case spends minutes outside the solver (loading, the demand
    model, emptying servers), the others well under two."""
    return limit + (900.0 if sc.from_file else 120.0 + 0.5 * limit)


class Throttled:
    """The planner's progress, logged at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, prefix: str):
        self.prefix, self.last = prefix, 0.0

    def __call__(self, msg: str) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            log(f"{self.prefix}: {msg}")


def prepare(sc: CurveScenario, workdir: Path) -> Tuple[Dict[str, Any], Path, Path, Path]:
    """The scenario's models (written to disk for the planner and the checker) and its instance catalogues:
    the planner's, and the checker's copy."""
    here = workdir / sc.key
    here.mkdir(parents=True, exist_ok=True)
    data = sc.build()
    models_path = write_models(data, here, sc.from_file)
    if sc.catalogue is None:
        return data, models_path, INSTANCES, checker_instances_yaml(here / "instances.yaml")
    own = here / "instances.yaml"
    own.write_text(yaml.safe_dump(sc.catalogue, sort_keys=False), encoding="utf-8")
    return data, models_path, own, own


def first_fit(sc: CurveScenario, data: Dict[str, Any], instances: Path, reference: ReferenceProfiles) -> Dict[str, Any]:
    catalogue = contracts.load(InstanceCatalogue, instances)
    models = contracts.parse(ModelCatalogue, data, f"scenario {sc.key}").models
    profiles, _ = resolve_profiles(models, reference if sc.use_reference else None)
    demand = build_demand(models, profiles, node_shapes(catalogue, sc.opts), sc.opts)
    ffd = first_fit_decreasing_by_price(demand, demand.shapes, sc.opts, float(sum(catalogue.platform.values())))
    return {"cost_per_hour": round(ffd.cost_per_hour, 4), "seconds": round(ffd.seconds, 3), "instances": ffd.instances,
            "models": len(models), "shapes": len(demand.shapes)}


def run_point(sc: CurveScenario, data: Dict[str, Any], models_path: Path, instances: Path, checker_instances: Path,
              limit: float) -> Dict[str, Any]:
    opts = replace(sc.opts, time_limit_s=limit)
    plan_path = models_path.parent / f"plan-{limit:g}.json"
    run = run_planner(None if sc.from_file else data, models_path, sc.use_reference, opts, plan_path,
                      wall_limit(sc, limit), Throttled(f"({sc.key}) {limit:g} s"), instances=instances)
    out: Dict[str, Any] = {"time_limit_s": limit, "status": run["status"], "wall_seconds": run["wall_seconds"]}
    if run["status"] != "ok":
        out["detail"] = run.get("detail", "")
        out["check"] = {"status": "skipped", "detail": "no plan"}
        return out
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    sol = plan["solver"]
    out.update({
        "seconds": round(run["seconds"], 3), "load_seconds": round(run["load_seconds"], 3),
        "solve_seconds": plan["solve_seconds"], "cost_per_hour": plan["cost_per_hour"],
        "lower_bound_per_hour": plan["lower_bound_per_hour"], "gap": plan["gap"], "instances": plan["instances"],
        "solver": {k: sol.get(k) for k in ("name", "classes", "columns", "rounds", "lp_converged", "lp_per_hour",
                                           "fluid_per_hour", "config_bound_per_hour",
                                           "whole_node_bound_per_hour", "integer")},
        # Shares of the cost, adding up to the gap (packing.planner.gap_split).
        "rounding_loss": sol.get("rounding_loss"), "bound_weakness": sol.get("bound_weakness"),
    })
    if sc.from_file:
        out["check"] = {"status": "skipped", "detail": f"check_plan.py takes more than {LARGE_CHECK_MINUTES} minutes on "
                                                        "this many models (pure-Python YAML); run it apart"}
    else:
        out["check"] = run_checker(models_path, checker_instances, plan_path, opts, SMALL_CHECK_TIMEOUT_S)
    out["loadavg_after"] = proc_loadavg()
    return out


def points_of(result: Dict[str, Any]) -> List[RunPoint]:
    return [RunPoint(r["time_limit_s"], r.get("seconds"), r.get("cost_per_hour"), r.get("lower_bound_per_hour"))
            for r in result["runs"]]


def summarise(result: Dict[str, Any]) -> Dict[str, Any]:
    """Figures across the runs of one scenario: the best bound and plan of any run, and each run's gap to them
    (a gap to the best bound that is smaller than the run's own gap is bound the run did not prove in time). A
    run's gap to the best bound splits at the best plan: the run's plan over the best plan is the plan's part,
    the best plan over the best bound the proof's."""
    points = points_of(result)
    bound, cost = best_bound(points), best_cost(points)
    for r, p in zip(result["runs"], points, strict=True):
        r["gap_to_best_bound"] = None if gap(p.cost_per_hour, bound) is None else round(gap(p.cost_per_hour, bound), 6)
        if cost is not None and p.cost_per_hour is not None:
            r["over_best_plan"] = round((p.cost_per_hour - cost) / p.cost_per_hour, 6)  # adds up with the rest
        if result["optimum_per_hour"] is not None and p.cost_per_hour is not None:
            r["over_optimum"] = round(p.cost_per_hour / result["optimum_per_hour"] - 1, 6)
    ffd = result["ffd"]["cost_per_hour"]
    return {"best_bound_per_hour": bound, "best_cost_per_hour": cost,
            "best_limit_s": next((p.time_limit_s for p in points if p.cost_per_hour == cost), None),
            # The best plan against the best bound: what no run's proof has closed yet.
            "best_plan_gap": None if gap(cost, bound) is None else round(gap(cost, bound), 6),
            "ffd_gap_to_best_bound": None if gap(ffd, bound) is None else round(gap(ffd, bound), 6)}


def run_scenario(sc: CurveScenario, limits: Sequence[float], reference: ReferenceProfiles, workdir: Path) -> Dict[str, Any]:
    log(f"({sc.key}) {sc.title}: generating the models")
    data, models_path, instances, checker_instances = prepare(sc, workdir)
    log(f"({sc.key}) first-fit decreasing by price")
    ffd = first_fit(sc, data, instances, reference)
    result: Dict[str, Any] = {"key": sc.key, "title": sc.title, "models": ffd.pop("models"), "shapes": ffd.pop("shapes"),
                              "instance_catalogue": "config/instances.yaml" if sc.catalogue is None else "its own (tests)",
                              "optimum_per_hour": sc.optimum_per_hour, "ffd": ffd, "runs": []}
    for limit in limits:
        log(f"({sc.key}) planning with a {limit:g} s limit")
        r = run_point(sc, data, models_path, instances, checker_instances, limit)
        result["runs"].append(r)
        log(f"({sc.key}) {limit:g} s: {r['status']}, {_money(r.get('cost_per_hour'))} $/h, bound "
            f"{_money(r.get('lower_bound_per_hour'))} $/h in {r.get('seconds', r['wall_seconds']):.1f} s; "
            f"check {r['check']['status']}")
    result["summary"] = summarise(result)
    return result


# -- output ------------------------------------------------------------------------------------

def _money(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:,.2f}"


def _share(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2%}"


def markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Packing benchmark: time against quality",
        "",
        f"{report['created_at']} on {m['cpu_model'] or m['processor'] or m['machine']} ({m['cpu_count']} CPUs), "
        f"Python {m['python']}; `cat /proc/loadavg` before: `{report['loadavg_before']}`, after: "
        f"`{report['loadavg_after']}`; {report['wall_seconds'] / 60:.0f} minutes in all.",
        f"`python -m bench.packing_curves{' --quick' if report['quick'] else ''}`, time limits "
        f"{', '.join(f'{x:g}' for x in report['time_limits_s'])} s. $/h include the platform's fixed costs.",
        "",
        "One planner run per time limit (the planner is deterministic given its limit; its plan exists only once",
        "rounding has run, near the end of the limit, so one long run cannot be sampled for plans). Planner s:",
        "wall time of parsing the models (the 100,000-model case: loading its .json file), resolving profiles and",
        "`plan_servers`. Gap: (cost − bound) / cost of that run. Best-bound gap: against the largest bound of",
        "any run of the scenario, which is valid for all of them. FFD: first-fit decreasing by price, once per",
        "scenario. Check: ../shared/tools/check_plan.py on that run's plan. A shared 2-core machine is noisy.",
        "LP: the column generation's LP value (`solver.lp_per_hour`; the exact cases: the integer master's).",
        "The gap splits into rounding (cost − LP) / cost, what whole servers on whole nodes cost over the LP, and",
        "bound (LP − bound) / cost, what the proof leaves below the LP. The LP is over the classes' upper sizes",
        "and may stop short of its optimum, so it is no bound: rounding can be negative (FFD or emptying",
        "part-filled servers beat the LP), and bound then holds what coarse classes and an unconverged LP add.",
        "Where the bound with whole nodes lies above the LP (whose nodes are fractional), the split is at the",
        "bound: the whole gap is rounding's. Over best plan: (cost − best plan) / cost, with the best plan the",
        "cheapest of any run of the scenario (the longest runs' as a rule): the part of the run's best-bound gap",
        "that another run's plan closed; the rest, (best plan − best bound) / cost, no run's plan or proof closed.",
    ]
    for r in report["scenarios"]:
        s = r["summary"]
        lines += ["", f"## ({r['key']}) {r['title']}", "",
                  f"{r['models']:,} models, {r['shapes']} shape{'s' if r['shapes'] != 1 else ''} (instance types × SLO "
                  f"tiers), instance catalogue "
                  f"{r['instance_catalogue']}. FFD {_money(r['ffd']['cost_per_hour'])} $/h in {r['ffd']['seconds']:.2f} s "
                  f"(gap to the best bound {_share(s['ffd_gap_to_best_bound'])}); best bound "
                  f"{_money(s['best_bound_per_hour'])} $/h; best plan {_money(s.get('best_cost_per_hour'))} $/h "
                  f"(the {s.get('best_limit_s') or 0:g} s run), {_share(s.get('best_plan_gap'))} above the best bound"
                  + (f"; optimum {_money(r['optimum_per_hour'])} $/h" if r["optimum_per_hour"] is not None else "") + ".",
                  "",
                  "| limit s | planner s | planner $/h | LP $/h | bound $/h | gap | rounding | bound | best-bound gap "
                  "| over best plan | planner/FFD " + ("| over optimum " if r["optimum_per_hour"] is not None else "")
                  + "| solver | check |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
                  + ("| --- " if r["optimum_per_hour"] is not None else "") + "| --- | --- |"]
        for p in r["runs"]:
            cost = p.get("cost_per_hour")
            ratio = "—" if cost is None else f"{cost / r['ffd']['cost_per_hour']:.3f}"
            sol = p.get("solver") or {}
            # `integer` is set when the plan kept is not the solver's own (first-fit decreasing was cheaper).
            how = (f"{sol['name']}, {sol['rounds']} rounds" + (f"; kept {sol['integer']}'s plan" if sol.get("integer") else "")
                   if sol else p.get("detail", ""))
            seconds = f"{p['seconds']:.1f}" if "seconds" in p else f"> {p['wall_seconds']:.0f} ({p['status']})"
            check = p["check"]["status"] + (f" ({p['check']['detail']})" if p["check"]["status"] != "ok" else "")
            cells = [f"{p['time_limit_s']:g}", seconds, _money(cost), _money(sol.get("lp_per_hour")),
                     _money(p.get("lower_bound_per_hour")), _share(p.get("gap")), _share(p.get("rounding_loss")),
                     _share(p.get("bound_weakness")), _share(p.get("gap_to_best_bound")),
                     _share(p.get("over_best_plan")), ratio]
            if r["optimum_per_hour"] is not None:
                cells.append(_share(p.get("over_optimum")))
            cells += [how, check]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    scen = report["scenarios"]
    cols = min(3, len(scen))
    rows = math.ceil(len(scen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), dpi=100, squeeze=False)
    for ax, r in zip(axes.flat, scen):
        pts = [p for p in points_of(r) if p.seconds is not None]
        xs = [p.time_limit_s for p in pts]
        ax.plot(xs, [p.cost_per_hour for p in pts], marker="o", label="plan")
        ax.plot(xs, [p.bound_per_hour for p in pts], marker="v", linestyle="--", label="bound")
        for p in pts:  # what the run took, beside the limit it was given
            ax.annotate(f"{p.seconds:.1f} s", (p.time_limit_s, p.cost_per_hour), textcoords="offset points",
                        xytext=(0, 5), ha="center", fontsize=6)
        ax.axhline(r["ffd"]["cost_per_hour"], color="grey", linestyle=":", label="FFD by price")
        if r["optimum_per_hour"] is not None:
            ax.axhline(r["optimum_per_hour"], color="green", linestyle="-.", linewidth=0.8, label="optimum")
        ax.set_xscale("log")
        limits = report["time_limits_s"]
        ax.set_xticks(limits, [f"{x:g}" for x in limits])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlim(limits[0] / 1.6, limits[-1] * 1.6)
        ax.set(title=f"({r['key']}) {r['title']}", xlabel="time limit, s (labels: seconds the run took)", ylabel="$/h")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(scen):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.packing_curves", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/packing_curves.json"),
                        help="results JSON (.md and .png beside it)")
    parser.add_argument("--quick", action="store_true", help="limits 5, 15 and 60 s, and no 100,000-model scenario "
                        "(about 4 minutes; the full run about 25)")
    parser.add_argument("--limits", type=parse_limits, default=None,
                        help="comma-separated time limits in seconds (default 5,15,60,300; --quick: 5,15,60)")
    parser.add_argument("--only", default=None, help="comma-separated scenario keys to run (default: all)")
    parser.add_argument("--large-models", type=positive_int, default=LARGE_MODELS, help="models in the large scenario (d)")
    args = parser.parse_args(argv)
    limits = args.limits or (QUICK_LIMITS if args.quick else LIMITS)
    chosen = curve_scenarios(args.quick, args.large_models)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {sc.key for sc in chosen})
        if unknown:
            parser.error(f"--only: no scenario {', '.join(unknown)} in this run; choose from "
                         f"{', '.join(sc.key for sc in chosen)}")
        chosen = [sc for sc in chosen if sc.key in wanted]

    started = time.monotonic()
    before = proc_loadavg()
    reference = contracts.load(ReferenceProfiles, REFERENCE)
    with tempfile.TemporaryDirectory(prefix="bench-packing-curves-") as tmp:
        results = [run_scenario(sc, limits, reference, Path(tmp)) for sc in chosen]
    report = {"schema": 1, "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "loadavg_before": before, "loadavg_after": proc_loadavg(), "wall_seconds": round(time.monotonic() - started, 1),
              "quick": args.quick, "time_limits_s": list(limits), "instances": str(INSTANCES.relative_to(ROOT)),
              "scenarios": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contracts.write_json_atomic(args.out, report)
    contracts.write_atomic(args.out.with_suffix(".md"), markdown(report))
    plot(report, args.out.with_suffix(".png"))
    log(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}; "
        f"load average after: {report['loadavg_after']}")
    runs = [(r["key"], p) for r in results for p in r["runs"]]
    failed = [f"{k} at {p['time_limit_s']:g} s" for k, p in runs if p["check"]["status"] == "failed"]
    broken = [f"{k} at {p['time_limit_s']:g} s" for k, p in runs if p["status"] in ("error", "crashed")]
    for what, bad in (("check_plan.py rejects the plan of", failed), ("the planner failed on", broken)):
        if bad:
            log(f"{what} {', '.join(bad)}")
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
