"""The solve stage: servers for the models of a demand model, placed on nodes, with a proven
lower bound.

    classes -> bounds (the fluid relaxation; with whole nodes, in a thread beside the rest)
            -> every pattern listed and the exact integer master         (small problems)
               or column generation -> part nodes closed -> iterated roundings -> instance sizes (the rest)
            -> the candidates filled with real models and placed on nodes, the cheapest kept

Candidate plans are compared on what their nodes cost, so the solve places them
(packing/place/assemble.py); the time each step gets comes from one budget (packing/budget.py).
"""
from __future__ import annotations

import copy
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

from packing import budget as shares
from packing.budget import TimeBudget, rounding_window
from packing.model.classes import Classes, build_classes
from packing.model.demand import Demand
from packing.model.resources import NodeShape, PackingOptions, nodes_price
from packing.place.assemble import BuiltServer, Solved, fill_servers, place_as_solved, place_on_nodes
from packing.place.fleet import Fleet, tighten
from packing.solve.bound import FluidSolution, fluid_relaxation, whole_node_bound
from packing.solve.columngen import ColumnGeneration
from packing.solve.columns import Pattern
from packing.solve.exact import enumerate_all, integer_nodes
from packing.solve.master import integer_master
from packing.solve.rounding import ROUND_UP_FROM, USEFUL_FRACTION, iterated_rounding
from packing.solve.sizes import close_part_nodes, rehome

# Up to this many models only identical models share a class, and every pattern may be listed.
EXACT_CLASSES_UP_TO = 60
CLASS_RESOLUTION = 0.03  # memory runs: memory usually binds, so they are narrow
LOAD_RESOLUTION = 0.5  # load buckets: coarse classes keep the LP small; hi/lo keep it honest
EXACT_PATTERNS_UP_TO = 5_000
EXACT_NODES_PER_TYPE = 12
SMALL_INTEGER_MASTER_UP_TO = 300
# Past that, the integer master over the LP's support and the rounding's servers, after rounding,
# started from the rounding's plan. Off: on the mixed 3,040 catalogue (seed 7; 2026-12-04, 2 shared
# cores) it returned the rounding's own plan in all four runs, proven optimal over those 246-361
# columns in three and out of time in the fourth (untiered, 60 s): the rounding is already the
# best whole choice of those columns. Plans, A (off) against B: $29.26 / $28.50 at 15 s and $30.63 /
# $30.63 at 60 s; with 50/100/250 ms tiers $29.88 / $29.88 and $30.49 / $30.65; the differences
# come from the column generation's timing (rounds 330 / 346 at 15 s), not from the master. Given
# all 9,774 columns of the untiered 60 s run and 30 s, HiGHS improved its rounding by 0.4% ($35.90
# -> $35.74/h, before emptying part-filled servers), its root bound at $27.76/h. Adding the 500
# columns of least reduced cost at the LP's duals (about 550 in all) improved the rounding only
# in the untiered 60 s run ($35.78 -> $34.16/h placed, $29.85/h after emptying servers); the
# other three runs returned the rounding's plan, the tiered 60 s one ending at $31.55/h.
RESTRICTED_INTEGER_MASTER = False
# Iterated rounding again over the same LP, while the solver's time allows, with these thresholds
# (packing/solve/rounding.py: round up from, share of a server's models still needed), each
# rounding placed and scored by what its nodes cost once part-filled servers are emptied, the
# cheapest kept. The first is the defaults'.
ROUNDING_VARIANTS: Tuple[Tuple[float, float], ...] = ((ROUND_UP_FROM, USEFUL_FRACTION), (0.25, 0.9), (0.45, 0.75),
                                                     (0.35, 0.5))



class Placed(NamedTuple):
    """A candidate plan: its servers filled with real models, their nodes, and what those cost."""

    built: List[BuiltServer]
    nodes: Dict[int, int]
    price: float


@dataclass(frozen=True)
class LPFigures:
    """What the LP (or the exact integer master) says, for the plan's `solver` block."""

    value: float
    rounds: int
    converged: bool
    bound: float  # the configuration LP's own proven bound (Farley; the exact optimum), 0 if none


class Rounded(NamedTuple):
    """One rounding of the LP, placed: the servers it chose and after re-homing, on nodes."""

    rounded: Dict[int, int]
    chosen: Dict[int, int]
    placed: Placed


def place_servers(servers: Dict[int, int], patterns: Sequence[Pattern], dem: Demand, cls: Classes,
                  opts: PackingOptions) -> Placed:
    """Chosen servers (pattern index -> count) filled with real models and placed on nodes:
    every candidate plan is compared on what its nodes cost."""
    built = fill_servers(servers, patterns, cls, dem)
    nodes = place_on_nodes(built, dem.shapes, spread=opts.min_replicas)
    return Placed(built, nodes, nodes_price(nodes, dem.shapes))


def place_rounding(cg: ColumnGeneration, rounded: Dict[int, int], dem: Demand, opts: PackingOptions,
                   rehome_until: float) -> Rounded:
    """Re-homed, filled and placed as the plan would be: roundings compare on what they cost on nodes."""
    chosen = rehome(cg, rounded, max(0.5, rehome_until - time.perf_counter()))
    return Rounded(rounded, chosen, place_servers(chosen, cg.patterns, dem, cg.cls, opts))


def emptied_price(placed: Placed, dem: Demand, opts: PackingOptions, deadline: float) -> float:
    """What `placed`'s nodes cost once its part-filled servers are emptied into the others' room
    (packing/place/fleet.py `tighten`, on a copy; stopped at `deadline`, an upper bound): roundings
    that differ in their part-filled tail compare on what the plan will cost."""
    fleet = Fleet.of_plan(copy.deepcopy(placed.built), dem, opts)
    tighten(fleet, deadline)
    return min(placed.price, fleet.cost())


def whole_node_bound_beside(cls: Classes, shapes: Sequence[NodeShape], opts: PackingOptions,
                            seconds: float) -> Future:
    """`whole_node_bound` in a thread of its own. HiGHS lets go of the GIL while it solves, so on
    a second core this bound costs the solver no time; it stops after `seconds` with what it has
    proven."""
    bounding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whole-node-bound")
    future = bounding.submit(whole_node_bound, cls, shapes, opts.min_replicas, seconds)
    bounding.shutdown(wait=False)
    return future


def solve_exact(cg: ColumnGeneration, dem: Demand, opts: PackingOptions, deadline: float,
                say: Callable[[str], None]) -> Tuple[Placed, LPFigures]:
    """Every pattern listed: the integer master over all of them is exact up to the node-level
    host memory it aggregates, and its proven optimum is a bound; where no per-node packing
    matches it, every node is made explicit."""
    shapes, cls = dem.shapes, cg.cls
    ip = integer_master(cg.patterns, cls.count, shapes, time_limit=max(1.0, deadline - time.perf_counter()))
    say(f"exact: every pattern listed ({len(cg.patterns)}), integer master ${ip.cost:.3f}/h")
    placed = place_servers(ip.servers, cg.patterns, dem, cls, opts)
    figures = LPFigures(ip.cost, 0, ip.optimal, ip.cost if ip.optimal else 0.0)
    if placed.price <= ip.cost + 1e-9:
        return placed, figures
    limits = {t: min(EXACT_NODES_PER_TYPE, int(placed.price / shapes[t].price + 1e-9)) for t in {p.shape for p in cg.patterns}}
    try:
        exact_nodes = integer_nodes(cg.patterns, cls.count, shapes, limits, max(1.0, deadline - time.perf_counter()))
    except RuntimeError:
        return placed, figures  # no better packing within those node counts: keep ours
    if exact_nodes.cost >= placed.price - 1e-9:
        return placed, figures
    built = fill_servers(exact_nodes.servers, cg.patterns, cls, dem)
    nodes = place_as_solved(built, exact_nodes.pods, shapes)
    return Placed(built, nodes, nodes_price(nodes, shapes)), figures


def solve_by_rounding(cg: ColumnGeneration, dem: Demand, opts: PackingOptions, budget: TimeBudget, fluid: FluidSolution,
                      small: bool, say: Callable[[str], None]) -> Tuple[Placed, LPFigures]:
    """Column generation, then iterated roundings (ROUNDING_VARIANTS, while time allows), each
    given instance sizes and placed, the cheapest once emptied kept; for small problems (or with
    RESTRICTED_INTEGER_MASTER) the integer master over the columns as well, the cheaper kept."""
    result = cg.run(budget.at(shares.COLUMN_GENERATION), warm=(fluid.pi, fluid.rho),
                    progress=lambda it, v, b: say(f"column generation: round {it}, LP ${v:.3f}/h, bound ${b:.3f}/h"))
    say(f"LP ${result.lp_value:.3f}/h after {result.iterations} rounds ({len(result.patterns)} columns); "
        f"bound ${result.lower_bound:.3f}/h")
    figures = LPFigures(result.lp_value, result.iterations, result.converged, result.lower_bound)
    # The LP's support, before the rounding's restricted LPs overwrite its values (for the
    # restricted integer master only).
    support = {int(j) for j in np.flatnonzero(cg.lp_values > 1e-9)} if RESTRICTED_INTEGER_MASTER and not small else set()
    closed = close_part_nodes(cg, time.perf_counter() + shares.PART_NODES * budget.seconds)
    if closed:
        say("closed to the roundings (part of a node in the LP, cheaper without): "
            + ", ".join(dem.shapes[t].name for t in closed) + f"; LP ${cg.master.solve()[0] + cg.hot_total:.3f}/h")
    scored: List[Tuple[float, int, Rounded]] = []
    for k, (up, useful) in enumerate(ROUNDING_VARIANTS):
        now = time.perf_counter()
        window = rounding_window(budget, k, now)
        if window is None:
            break
        round_until, place_until = window
        if k:
            cg.read_lp(round_until)  # the master as restored by the last rounding, with the columns it priced
        rounded = iterated_rounding(cg, round_until, round_up_from=up, useful=useful)
        r = place_rounding(cg, rounded, dem, opts, place_until)
        score = emptied_price(r.placed, dem, opts, place_until)
        say(f"integer: iterated rounding ({up:g}, {useful:g}) ${cg.pod_cost(rounded):.3f}/h of pods, "
            f"${r.placed.price:.3f}/h placed, ${score:.3f}/h with part-filled servers emptied")
        scored.append((score, k, r))
    best = min(scored)[2]  # ties: the earlier rounding
    if not (small or RESTRICTED_INTEGER_MASTER) or time.perf_counter() >= budget.deadline - 1.0:
        return best.placed, figures
    # The integer master over the generated columns sometimes rounds better than iterated
    # rounding. Small problems give it every column; large ones only the LP's support and the
    # rounding's servers, started from the plan in hand.
    hot = cg.hot_columns()  # every shape for the models hot everywhere (added first: small problems take every column)
    keys = sorted(range(len(cg.patterns)) if small else support | set(best.rounded) | set(best.chosen) | hot)
    subset = [cg.patterns[j] for j in keys]
    local = {j: k for k, j in enumerate(keys)}
    start = None if small else {local[j]: m for j, m in best.chosen.items()}
    try:
        ip = integer_master(subset, cg.cls.count, dem.shapes, time_limit=max(1.0, budget.deadline - time.perf_counter()),
                            start=start)
    except RuntimeError:
        return best.placed, figures  # no incumbent within the time left: keep the rounding's plan
    other = place_servers(ip.servers, subset, dem, cg.cls, opts)
    say(f"integer master over {len(subset)} columns: ${ip.cost:.3f}/h, ${other.price:.3f}/h placed ({ip.status}), "
        f"rounding ${best.placed.price:.3f}/h")
    return (other if other.price < best.placed.price - 1e-9 else best.placed), figures


def solve(dem: Demand, shapes: Sequence[NodeShape], opts: PackingOptions, deadline: float,
          say: Callable[[str], None]) -> Solved:
    """Servers and their placements for the models of `dem` (over `shapes`, its own), with a proven bound."""
    budget = TimeBudget.until(deadline)
    n = len(dem.model_ids)
    cls = build_classes(dem, opts.max_utilization, 0.0 if n <= EXACT_CLASSES_UP_TO else CLASS_RESOLUTION, LOAD_RESOLUTION)
    say(f"{n} models in {len(cls)} classes over {len(shapes)} instance types")
    fluid = fluid_relaxation(cls, shapes, opts.min_replicas)
    say(f"fluid relaxation: ${fluid.value:.3f}/h")
    whole = whole_node_bound_beside(cls, shapes, opts, budget.left())
    cg = ColumnGeneration(cls, shapes, opts.min_replicas)
    exact = n <= EXACT_CLASSES_UP_TO and enumerate_all(cg, limit=EXACT_PATTERNS_UP_TO)
    if exact:
        placed, lp = solve_exact(cg, dem, opts, budget.deadline, say)
    else:
        placed, lp = solve_by_rounding(cg, dem, opts, budget, fluid, n <= SMALL_INTEGER_MASTER_UP_TO, say)
    whole_nodes = whole.result()
    say(f"fluid relaxation with whole nodes: ${whole_nodes:.3f}/h")
    info = {"name": "exact-enumeration+highs" if exact else "column-generation+highs", "classes": len(cls),
            "columns": len(cg.patterns), "rounds": lp.rounds, "lp_converged": lp.converged,
            "lp_per_hour": lp.value, "fluid_per_hour": fluid.value,
            # The configuration LP's own bound (Farley, over the classes' `lo` values), apart from
            # the fluid ones, so a benchmark shows which of them the reported bound comes from.
            "config_bound_per_hour": lp.bound, "whole_node_bound_per_hour": whole_nodes}
    return Solved(placed.built, placed.nodes, max(fluid.value, lp.bound, whole_nodes), info)
