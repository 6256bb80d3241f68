"""plan_servers: profiles + traffic + instance catalogue -> a Plan with a proven lower bound."""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from contracts import InstanceCatalogue, ModelSpec, Plan, Profile
from packing import budget as shares
from packing.budget import TimeBudget
from packing.improve.repair import ffd_nodes, from_baseline, improve, tighten_plan
from packing.model.classes import Classes, build_classes
from packing.model.demand import Demand, build_demand
from packing.model.dominance import undominated
from packing.model.latency import Stream, pod_p90_ms
from packing.model.resources import NodeShape, PackingOptions, node_shapes, nodes_price
from packing.model.tiers import service_of
from packing.place.assemble import BuiltServer, Solved, fill_servers, memory_request_mib, place_as_solved, place_on_nodes, pod_figures
from packing.report.loads import ModelLoad, PodLoad
from packing.solve.baselines import first_fit_decreasing_by_price
from packing.solve.colgen import ColumnGeneration, Pattern
from packing.solve.formulation import ServerGroup, choose_shapes, fluid_relaxation, integer_master, integer_nodes, whole_node_bound
from packing.solve.knapsack import quiet_banner

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
# Iterated rounding also at these shares of the column generation's own time, each placed as the
# end rounding is, the cheapest placed plan kept: longer runs round worse (8,100 columns at 60 s gave
# $33.2/h of pods, 15 s runs $28.9-29.2/h). Empty: round once, at the end. Off: on the mixed 3,040
# catalogue (seed 7; 2026-12-04, 2 shared cores, 2 runs a setting, A off / B (0.25, 0.5)) B's median
# final plans were dearer untiered at 15 s ($30.22 against $29.19/h; with the moments counted in the
# loop's own time, as now, $30.99 against $29.76) and cheaper elsewhere: tiered 15 s $29.63 / $31.28
# ($30.15 / $31.37), untiered 60 s $29.49 / $29.94 ($30.55 / $30.63), tiered 60 s $30.46 / $31.74
# ($30.61 / $30.95). Each rounding takes its share of the time (2.5 s at 15 s, 4-10 s at 60 s) and
# adds columns priced at its restricted duals (at 15 s 6,300-7,300 columns after 91-123 rounds
# against 5,600 after 310-337), so the LP ends dearer ($27.62-27.90 against $27.48/h) and so does
# the end rounding; the checkpoints' own roundings were never the cheaper there.
ROUNDING_CHECKPOINTS: Tuple[float, ...] = ()


@dataclass
class PlanResult:
    plan: Plan
    pods: List[PodLoad]
    demand: Demand


def _server_ids(servers: Sequence[BuiltServer], shapes: Sequence[NodeShape]) -> List[str]:
    """Ids `<processor>-<NNNN>`, numbered per processor in node order, so they read in placement order."""
    order = sorted(range(len(servers)), key=lambda k: (shapes[servers[k].shape].processor, servers[k].shape,
                                                       servers[k].placements[0], k))
    seq: Dict[str, int] = {}
    ids = [""] * len(servers)
    for k in order:
        proc = shapes[servers[k].shape].processor
        ids[k] = f"{proc}-{seq.get(proc, 0):04d}"
        seq[proc] = seq.get(proc, 0) + 1
    return ids


def rehome(cg: ColumnGeneration, chosen: Dict[int, int], shapes: Sequence[NodeShape], time_limit: float) -> Dict[int, int]:
    """Let every chosen server move to any instance type of its processor where it fits, whole
    or split in two pods' worth, then round to whole nodes once, over all of them
    (`choose_shapes`). The LP favours the size with the roomiest pods; a few such pods left over
    would otherwise cost a whole large node."""
    keys = sorted(chosen)
    groups, ways = [], []
    for j in keys:
        p = cg.patterns[j]
        options, how = {}, {}
        for t, s in enumerate(shapes):
            if s.processor != shapes[p.shape].processor:
                continue
            there = [p] if t == p.shape else cg.moved(p, t)
            if there:
                options[t] = (sum(q.replicas for q in there), max(q.host_per_pod for q in there))
                how[t] = there
        groups.append(ServerGroup(chosen[j], options))
        ways.append(how)
    split = choose_shapes(groups, shapes, time_limit)
    out: Dict[int, int] = {}
    for how, where in zip(ways, split, strict=True):
        for t, n in where.items():
            for q in how[t]:
                k = cg.index_of(q)
                out[k] = out.get(k, 0) + n
    return out


class Rounded(NamedTuple):
    """One rounding of the LP, placed: the servers it chose and after re-homing, on nodes."""

    rounded: Dict[int, int]
    chosen: Dict[int, int]
    built: List[BuiltServer]
    nodes: Dict[int, int]
    placed: float


def place_servers(servers: Dict[int, int], patterns: Sequence[Pattern], dem: Demand, cls: Classes,
                  shapes: Sequence[NodeShape], opts: PackingOptions) -> Tuple[List[BuiltServer], Dict[int, int], float]:
    """Chosen servers (pattern index -> count) filled with real models and placed on nodes, and what the nodes cost:
    every candidate plan is compared on that."""
    built = fill_servers(servers, patterns, cls, dem)
    nodes = place_on_nodes(built, shapes, spread=opts.min_replicas)
    return built, nodes, nodes_price(nodes, shapes)


def place_rounding(cg: ColumnGeneration, rounded: Dict[int, int], dem: Demand, cls: Classes, shapes: Sequence[NodeShape],
                   opts: PackingOptions, rehome_until: float) -> Rounded:
    """Re-homed, filled and placed as the plan would be: roundings compare on what they cost on nodes."""
    chosen = rehome(cg, rounded, shapes, max(0.5, rehome_until - time.perf_counter()))
    return Rounded(rounded, chosen, *place_servers(chosen, cg.patterns, dem, cls, shapes, opts))


def checkpoint_roundings(cg: ColumnGeneration, budget: TimeBudget, dem: Demand, cls: Classes, shapes: Sequence[NodeShape],
                         opts: PackingOptions, say: Callable[[str], None]) -> Tuple[List[float], Callable[[], None],
                                                                                     List[Rounded]]:
    """The moments of ROUNDING_CHECKPOINTS, a callback for `cg.run` that rounds and places the LP
    then, and the list it fills. Each rounding gets the end rounding's and re-homing's shares of
    time, counted from when it starts (one may end past the column generation's end, leaving the
    later stages less: they stop at their own moments, so the plan still ends within the limit)."""
    start, end = budget.start, budget.at(shares.COLUMN_GENERATION)
    moments = [start + f * (end - start) for f in ROUNDING_CHECKPOINTS]
    found: List[Rounded] = []
    rounding_s = (shares.ROUNDING - shares.COLUMN_GENERATION) * budget.seconds
    rehome_s = (shares.REHOME - shares.ROUNDING) * budget.seconds

    def at_checkpoint() -> None:
        now = time.perf_counter()
        r = place_rounding(cg, cg.round_now(now + rounding_s), dem, cls, shapes, opts, now + rounding_s + rehome_s)
        say(f"checkpoint rounding over {len(cg.patterns)} columns: ${cg.pod_cost(r.rounded):.3f}/h of pods, "
            f"${r.placed:.3f}/h placed ({time.perf_counter() - now:.1f} s)")
        found.append(r)

    return moments, at_checkpoint, found


def solve(dem: Demand, shapes: Sequence[NodeShape], opts: PackingOptions, deadline: float,
          say: Callable[[str], None]) -> Solved:
    """Servers and their placements for the models of `dem`, with a proven bound."""
    budget = TimeBudget.until(deadline)
    n = len(dem.model_ids)
    resolution = 0.0 if n <= EXACT_CLASSES_UP_TO else CLASS_RESOLUTION
    cls = build_classes(dem, opts.max_utilization, resolution, LOAD_RESOLUTION)
    say(f"{n} models in {len(cls)} classes over {len(shapes)} instance types")

    fluid = fluid_relaxation(cls, shapes, opts.min_replicas)
    say(f"fluid relaxation: ${fluid.value:.3f}/h")
    # HiGHS lets go of the GIL while it solves, so on a second core this bound costs the solver
    # no time; it stops at the solver's end with what it has proven.
    bounding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whole-node-bound")
    whole = bounding.submit(whole_node_bound, cls, shapes, opts.min_replicas, budget.left())
    bounding.shutdown(wait=False)
    cg = ColumnGeneration(cls, shapes, opts.min_replicas)
    exact = n <= EXACT_CLASSES_UP_TO and cg.enumerate_all(limit=EXACT_PATTERNS_UP_TO)
    small = n <= SMALL_INTEGER_MASTER_UP_TO
    if exact:
        # Small enough to list every server pattern: the integer master over all of them is exact
        # (up to the node-level host memory it aggregates), and its proven optimum is a bound.
        ip = integer_master(cg.patterns, cls.count, shapes, time_limit=max(1.0, deadline - time.perf_counter()))
        chosen = ip.servers
        lower = max(fluid.value, ip.cost if ip.optimal else 0.0)
        config_bound = ip.cost if ip.optimal else 0.0
        lp_value, rounds, converged = ip.cost, 0, ip.optimal
        say(f"exact: every pattern listed ({len(cg.patterns)}), integer master ${ip.cost:.3f}/h")
        built, nodes, placed = place_servers(chosen, cg.patterns, dem, cls, shapes, opts)
    else:
        moments, at_checkpoint, earlier = checkpoint_roundings(cg, budget, dem, cls, shapes, opts, say)
        result = cg.run(budget.at(shares.COLUMN_GENERATION), warm=(fluid.pi, fluid.rho),
                        progress=lambda it, v, b: say(f"column generation: round {it}, LP ${v:.3f}/h, bound ${b:.3f}/h"),
                        checkpoints=moments, at_checkpoint=at_checkpoint if moments else None)
        say(f"LP ${result.lp_value:.3f}/h after {result.iterations} rounds ({len(result.patterns)} columns); "
            f"bound ${result.lower_bound:.3f}/h")
        # The LP's support, before the rounding's restricted LPs overwrite its values (for the
        # restricted integer master only).
        support = {int(j) for j in np.flatnonzero(cg.lp_values > 1e-9)} if RESTRICTED_INTEGER_MASTER and not small else set()
        rounded = cg.integer_solution(budget.at(shares.ROUNDING))
        say(f"integer: iterated rounding ${cg.pod_cost(rounded):.3f}/h of pods")
        last = place_rounding(cg, rounded, dem, cls, shapes, opts, budget.at(shares.REHOME))
        best = min([last, *earlier], key=lambda r: r.placed)  # ties: the end rounding's plan, as before
        if best is not last:
            say(f"a checkpoint rounding places cheaper: ${best.placed:.3f}/h against ${last.placed:.3f}/h")
        rounded, chosen, built, nodes, placed = best
        lower = max(fluid.value, result.lower_bound)
        config_bound = result.lower_bound
        lp_value, rounds, converged = result.lp_value, result.iterations, result.converged
    if not exact and (small or RESTRICTED_INTEGER_MASTER) and time.perf_counter() < deadline - 1.0:
        # The integer master over the generated columns sometimes rounds better than iterated
        # rounding; keep whichever packs cheaper. Small problems give it every column; large ones
        # only the LP's support and the rounding's servers, started from the plan in hand.
        hot = cg.hot_columns()
        keys = sorted(range(len(cg.patterns)) if small else support | set(rounded) | set(chosen) | hot)
        subset = [cg.patterns[j] for j in keys]
        local = {j: k for k, j in enumerate(keys)}
        start = None if small else {local[j]: m for j, m in chosen.items()}
        try:
            ip = integer_master(subset, cls.count, shapes, time_limit=max(1.0, deadline - time.perf_counter()),
                                start=start)
        except RuntimeError:
            ip = None  # no incumbent within the time left: keep the rounding's plan
        if ip is not None:
            other, other_nodes, other_cost = place_servers(ip.servers, subset, dem, cls, shapes, opts)
            say(f"integer master over {len(subset)} columns: ${ip.cost:.3f}/h, ${other_cost:.3f}/h placed ({ip.status}), "
                f"rounding ${placed:.3f}/h")
            if other_cost < placed - 1e-9:
                built, nodes, placed = other, other_nodes, other_cost
    if exact and placed > ip.cost + 1e-9:
        # The integer master counted node memory in aggregate and no per-node packing matches
        # it: solve with every node explicit, within the cost of the packing we already have.
        limits = {t: min(EXACT_NODES_PER_TYPE, int(placed / shapes[t].price + 1e-9))
                  for t in {p.shape for p in cg.patterns}}
        try:
            exact_nodes = integer_nodes(cg.patterns, cls.count, shapes, limits, max(1.0, deadline - time.perf_counter()))
        except RuntimeError:
            exact_nodes = None  # no better packing within those node counts: keep ours
        if exact_nodes is not None and exact_nodes.cost < placed - 1e-9:
            built = fill_servers(exact_nodes.servers, cg.patterns, cls, dem)
            nodes = place_as_solved(built, exact_nodes.pods, shapes)
    whole_nodes = whole.result()
    say(f"fluid relaxation with whole nodes: ${whole_nodes:.3f}/h")
    lower = max(lower, whole_nodes)
    info = {"name": "exact-enumeration+highs" if exact else "column-generation+highs", "classes": len(cls),
            "columns": len(cg.patterns), "rounds": rounds, "lp_converged": converged,
            "lp_per_hour": lp_value, "fluid_per_hour": fluid.value,
            # The configuration LP's own bound (Farley, over the classes' `lo` values), apart from
            # the fluid one, so a benchmark shows which of the two the reported bound comes from.
            "config_bound_per_hour": config_bound, "whole_node_bound_per_hour": whole_nodes}
    return Solved(built, nodes, lower, info)


def pack(dem: Demand, shapes: Sequence[NodeShape], opts: PackingOptions, start: float, deadline: float,
         say: Callable[[str], None]) -> Solved:
    """The solver, the re-plan of part-empty nodes and first-fit decreasing, cheapest kept; `dem`
    over undominated `shapes`. Also packs a re-plan's new and displaced models (packing/improve/replan.py)."""
    budget = TimeBudget(start, deadline - start)
    solved = solve(dem, shapes, opts, budget.at(shares.SOLVE), say)
    solved = improve(solved, dem, shapes, opts, budget.at(shares.IMPROVE), say, solve)
    solved = tighten_plan(solved, dem, shapes, opts, deadline, say)
    # First-fit decreasing is fast and, on some catalogues, better than a column generation
    # that ran out of time: the plan is never dearer than it.
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
    deadline = start + opts.time_limit_s
    dem = build_demand(models, profiles, node_shapes(catalogue, opts), opts)
    shapes = dem.shapes  # one per instance type and SLO tier
    keep = undominated(dem, shapes)
    if len(keep) < len(shapes):
        say(f"{len(shapes) - len(keep)} instance types dominated by others: "
            + ", ".join(s.name for t, s in enumerate(shapes) if t not in keep))
        shapes = [shapes[t] for t in keep]
        dem = dem.on_shapes(keep)
    solved = pack(dem, shapes, opts, start, deadline, say)
    return write_plan(solved, dem, _server_ids(solved.built, shapes), models, profile_sources, catalogue, opts,
                      inputs, time.perf_counter() - start)


def pod_streams(s: BuiltServer, dem: Demand) -> List[Stream]:
    """One pod's traffic, model by model, for the latency model (packing/model/latency.py)."""
    shape = dem.shapes[s.shape]
    out = []
    for m in s.models:
        service, after = service_of(shape, float(dem.latency[m, s.shape]), float(dem.p90[m, s.shape]))
        out.append(Stream(float(dem.rps[m]) / s.replicas, service, after))
    return out


def predicted_pod_p90_ms(s: BuiltServer, dem: Demand) -> float:
    return pod_p90_ms(dem.shapes[s.shape].cores_per_device, pod_streams(s, dem))


def pod_cpu_request_m(s: BuiltServer, dem: Demand) -> int:
    """A cpu slice requests its slice; an accelerator pod its server base plus the server's own
    work at the pod's rate (rps x ms per request = millicores), within its share of the node."""
    shape = dem.shapes[s.shape]
    if shape.processor == "cpu":
        return shape.pod_cpu_m
    rate = float(dem.rps[s.models].sum()) / s.replicas
    share = int(shape.cpu_alloc_m // shape.slots)
    return int(min(share, max(shape.pod_cpu_m, math.ceil(shape.pod_cpu_m + rate * shape.request_cpu_ms))))


def latency_model_info(catalogue: InstanceCatalogue) -> Dict[str, object]:
    """What the plan's predicted P90s assume (packing/model/latency.py), so a reader can weigh them."""
    return {"name": "M/G/c (Allen-Cunneen), lognormal service through the profile's p50 and p90",
            "service_at": "each profile's measured sequence length (the traced length); shorter texts run faster",
            "request_cpu_ms": catalogue.server_base.request_cpu_ms,
            "request_cpu_on": "cpu pods: the model's cores (added to service); accelerator pods: the host (added after)",
            "batching": ("not in these figures: every request its own forward (batching adds capacity under load, "
                         "but the plan does not know its servers' MAX_BATCH_SIZE; packing.model.latency.batching_prediction "
                         "models it, checked in make bench-latency)")}


def gap_split(cost: float, lp: float, bound: float) -> Dict[str, float]:
    """The gap (cost - bound) / cost in two parts that add up to it: what whole servers on whole
    nodes cost over the column generation's LP, and what the proof leaves between the LP and the
    bound. The LP is over the classes' upper sizes and may be unconverged, so it is no bound: the
    first part can be negative (first-fit decreasing or emptying servers beat it). Its nodes are
    fractional, so the bound with whole nodes can lie above it: then the proof leaves nothing
    there, and the whole gap is rounding's."""
    if cost <= 0:
        return {"rounding_loss": 0.0, "bound_weakness": 0.0}
    middle = max(lp, bound)
    return {"rounding_loss": round((cost - middle) / cost, 6), "bound_weakness": round((middle - bound) / cost, 6)}


def write_plan(solved: Solved, dem: Demand, ids: Sequence[str], models: Sequence[ModelSpec],
               profile_sources: Mapping[str, Mapping[str, str]], catalogue: InstanceCatalogue, opts: PackingOptions,
               inputs: Optional[Mapping[str, str]], solve_seconds: float) -> PlanResult:
    """The Plan of built servers (`ids[k]` names `solved.built[k]`), with the pods' figures."""
    shapes = dem.shapes
    built, nodes, lower = solved.built, solved.nodes, solved.lower
    info = solved.info

    platform = float(sum(catalogue.platform.values()))
    instances = {shapes[t].name: n for t, n in sorted(nodes.items(), key=lambda kv: shapes[kv[0]].name) if n > 0}
    cost = nodes_price(nodes, shapes) + platform
    bound = min(lower + platform, cost)
    lp = float(info["lp_per_hour"]) + platform

    servers_json, pods = [], []
    models_by_id = {m.id: m for m in models}
    for k in sorted(range(len(built)), key=lambda k: ids[k]):
        s = built[k]
        shape = shapes[s.shape]
        mem, util, _, _ = pod_figures(s, dem)
        accel = shape.accelerator
        model_ids = [dem.model_ids[m] for m in s.models]
        slos = [models_by_id[i].slo_p90_ms for i in model_ids if models_by_id[i].slo_p90_ms is not None]
        servers_json.append({
            "id": ids[k], "instance_type": shape.name, "processor": shape.processor, "replicas": s.replicas,
            "placements": [{"instance_index": n, "device_index": d} for n, d in s.placements],
            "models": model_ids,
            "requests": {"cpu_m": pod_cpu_request_m(s, dem), "memory_mib": memory_request_mib(s),
                         **({"accelerator": {"name": accel[0], "count": accel[1]}} if accel else {})},
            "memory_budget_mib": memory_request_mib(s),
            **({"slo_p90_ms": min(slos)} if slos else {}),
            "utilisation_cap": round(shape.utilisation_cap, 6),
            "predicted": {"utilisation": round(util, 6), "p90_ms": round(predicted_pod_p90_ms(s, dem), 3)},
        })
        pods.append(PodLoad(ids[k], shape.name, shape.processor, s.replicas, shape.device_memory_cap_mib,
                            shape.utilisation_cap,
                            tuple(ModelLoad(dem.model_ids[m], float(dem.d[m, s.shape]), float(dem.u[m, s.shape]) / s.replicas)
                                  for m in s.models)))
        del mem
    plan = Plan.model_validate({
        "schema": 1,
        "inputs": dict(inputs or {}),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items() if k != "time_limit_s"},
        "solver": {**info, "lp_per_hour": round(lp, 6), **gap_split(cost, lp, bound),
                   "fluid_per_hour": round(float(info["fluid_per_hour"]) + platform, 6),
                   "config_bound_per_hour": round(float(info["config_bound_per_hour"]) + platform, 6),
                   "whole_node_bound_per_hour": round(float(info["whole_node_bound_per_hour"]) + platform, 6),
                   "time_limit_s": opts.time_limit_s,
                   "latency_model": latency_model_info(catalogue)},
        "instances": instances,
        "cost_per_hour": round(cost, 6),
        "platform_per_hour": round(platform, 6),
        "lower_bound_per_hour": round(bound, 6) if bound < cost else round(cost, 6),
        "gap": round((cost - bound) / cost, 6) if cost > 0 else 0.0,
        "solve_seconds": round(solve_seconds, 3),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "servers": servers_json,
        "profile_sources": {m.id: dict(profile_sources.get(m.id, {})) for m in models},
    })
    return PlanResult(plan, pods, dem)
