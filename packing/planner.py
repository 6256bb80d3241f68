"""plan_servers: profiles + traffic + instance catalogue -> a Plan with a proven lower bound.

The pipeline, one stage a folder, each within its share of one time budget (packing/budget.py):

    model    the demand model: what each model needs on each instance type; dominated types dropped
    solve    classes, bounds, column generation and rounding (or the exact path), placed on nodes
    improve  part-empty nodes re-planned, part-filled servers emptied, first-fit decreasing beside
    report   the plan file, with each pod's predicted figures
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Optional, Sequence, Tuple

from contracts import InstanceCatalogue, ModelSpec, Profile
from packing import budget as shares
from packing.budget import TimeBudget
from packing.improve.repair import ffd_nodes, from_baseline, improve, tighten_plan
from packing.model.demand import Demand, build_demand
from packing.model.dominance import undominated
from packing.model.resources import NodeShape, PackingOptions, node_shapes, nodes_price
from packing.place.assemble import Solved
from packing.report.plan_file import PlanResult, server_ids, write_plan
from packing.solve.baselines import first_fit_decreasing_by_price
from packing.solve.knapsack import quiet_banner
from packing.solve.solver import solve


def demand_model(models: Sequence[ModelSpec], profiles: Mapping[str, Mapping[str, Profile]], catalogue: InstanceCatalogue,
                 opts: PackingOptions, say: Callable[[str], None]) -> Tuple[Demand, Sequence[NodeShape]]:
    """The demand over the instance types (one shape per type and SLO tier) that no other dominates."""
    dem = build_demand(models, profiles, node_shapes(catalogue, opts), opts)
    keep = undominated(dem, dem.shapes)
    if len(keep) < len(dem.shapes):
        say(f"{len(dem.shapes) - len(keep)} instance types dominated by others: "
            + ", ".join(s.name for t, s in enumerate(dem.shapes) if t not in keep))
        dem = dem.on_shapes(keep)
    return dem, dem.shapes


def pack(dem: Demand, shapes: Sequence[NodeShape], opts: PackingOptions, start: float, deadline: float,
         say: Callable[[str], None]) -> Solved:
    """Solve, then improve, the plan never dearer than first-fit decreasing; `dem` over undominated
    `shapes`. Also packs a re-plan's new and displaced models (packing/replanner.py)."""
    budget = TimeBudget(start, deadline - start)
    solved = solve(dem, shapes, opts, budget.at(shares.SOLVE), say)
    solved = improve(solved, dem, shapes, opts, budget.at(shares.IMPROVE), say, solve)
    solved = tighten_plan(solved, dem, shapes, opts, deadline, say)
    # First-fit decreasing is fast and, on some catalogues, better than a column generation
    # that ran out of time.
    ffd = first_fit_decreasing_by_price(dem, shapes, opts, platform=0.0)
    ours = nodes_price(solved.nodes, shapes)
    if ffd.cost_per_hour < ours - 1e-9:
        say(f"first-fit decreasing beats the rounded LP: ${ffd.cost_per_hour:.3f}/h against ${ours:.3f}/h")
        solved = Solved(from_baseline(ffd, dem), ffd_nodes(ffd, shapes), solved.lower,
                        {**solved.info, "integer": "first-fit decreasing"})
    return solved


def plan_servers(
    models: Sequence[ModelSpec],
    profiles: Mapping[str, Mapping[str, Profile]],
    profile_sources: Mapping[str, Mapping[str, str]],
    catalogue: InstanceCatalogue,
    opts: PackingOptions,
    inputs: Optional[Mapping[str, str]] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> PlanResult:
    say = progress or (lambda _msg: None)
    quiet_banner()
    start = time.perf_counter()
    dem, shapes = demand_model(models, profiles, catalogue, opts, say)
    solved = pack(dem, shapes, opts, start, start + opts.time_limit_s, say)
    return write_plan(solved, dem, server_ids(solved.built, shapes), models, profile_sources, catalogue, opts,
                      inputs, time.perf_counter() - start)
