"""plan_servers: profiles + traffic + instance catalogue -> a Plan with a proven lower bound."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from contracts import InstanceCatalogue, ModelSpec, Plan, Profile
from packing.assemble import BuiltServer, fill_servers, memory_request_mib, place_as_solved, place_on_nodes, pod_figures
from packing.classes import build_classes
from packing.colgen import ColumnGeneration
from packing.demand import Demand, build_demand
from packing.formulation import ServerGroup, choose_shapes, fluid_relaxation, integer_master, integer_nodes
from packing.loads import ModelLoad, PodLoad
from packing.queueing import predicted_p90_ms
from packing.resources import NodeShape, PackingOptions, node_shapes

# Below this many models every model is its own class: classes are exact and cheap.
EXACT_CLASSES_UP_TO = 60
CLASS_RESOLUTION = 0.02  # memory runs: memory usually binds, so they are narrow
LOAD_RESOLUTION = 0.5  # load buckets: coarse classes keep the LP small; hi/lo keep it honest
EXACT_PATTERNS_UP_TO = 20_000
EXACT_NODES_PER_TYPE = 12


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
    """Let every chosen server move to any instance type of its processor where it fits, then
    round to whole nodes once, over all of them (`choose_shapes`)."""
    keys = sorted(chosen)
    groups = []
    for j in keys:
        p = cg.patterns[j]
        options = {}
        for t, s in enumerate(shapes):
            if s.processor == shapes[p.shape].processor:
                q = p if t == p.shape else cg.fits(p, t)
                if q is not None:
                    options[t] = (q.replicas, q.host_per_pod)
        groups.append(ServerGroup(chosen[j], options))
    split = choose_shapes(groups, shapes, time_limit)
    out: Dict[int, int] = {}
    for j, where in zip(keys, split, strict=True):
        p = cg.patterns[j]
        for t, n in where.items():
            q = p if t == p.shape else cg.fits(p, t)
            k = cg.index_of(q)
            out[k] = out.get(k, 0) + n
    return out


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
    start = time.perf_counter()
    deadline = start + opts.time_limit_s
    shapes = node_shapes(catalogue, opts)
    dem = build_demand(models, profiles, shapes, opts)
    resolution = 0.0 if len(models) <= EXACT_CLASSES_UP_TO else CLASS_RESOLUTION
    cls = build_classes(dem, opts.max_utilization, resolution, LOAD_RESOLUTION)
    say(f"{len(models)} models in {len(cls)} classes over {len(shapes)} instance types")

    fluid = fluid_relaxation(cls, shapes, opts.min_replicas)
    say(f"fluid relaxation: ${fluid.value:.3f}/h")
    cg = ColumnGeneration(cls, shapes, opts.min_replicas)
    exact = len(models) <= EXACT_CLASSES_UP_TO and cg.enumerate_all(limit=EXACT_PATTERNS_UP_TO)
    if exact:
        # Small enough to list every server pattern: the integer master over all of them is exact
        # (up to the node-level host memory it aggregates), and its proven optimum is a bound.
        ip = integer_master(cg.patterns, cls.count, shapes, time_limit=max(1.0, deadline - time.perf_counter()))
        chosen = ip.servers
        lower = max(fluid.value, ip.cost if ip.optimal else 0.0)
        lp_value, rounds, converged = ip.cost, 0, ip.optimal
        say(f"exact: every pattern listed ({len(cg.patterns)}), integer master ${ip.cost:.3f}/h")
    else:
        result = cg.run(start + 0.6 * opts.time_limit_s, warm=(fluid.pi, fluid.rho),
                        progress=lambda it, v, b: say(f"column generation: round {it}, LP ${v:.3f}/h, bound ${b:.3f}/h"))
        say(f"LP ${result.lp_value:.3f}/h after {result.iterations} rounds ({len(result.patterns)} columns); "
            f"bound ${result.lower_bound:.3f}/h")
        chosen = cg.integer_solution(start + 0.85 * opts.time_limit_s)
        chosen = rehome(cg, chosen, shapes, max(0.5, deadline - time.perf_counter()))
        lower = max(fluid.value, result.lower_bound)
        lp_value, rounds, converged = result.lp_value, result.iterations, result.converged
    built = fill_servers(chosen, cg.patterns, cls, dem)
    nodes = place_on_nodes(built, shapes, spread=opts.min_replicas)
    placed = sum(shapes[t].price * n for t, n in nodes.items())
    if exact and placed > ip.cost + 1e-9:
        # The integer master counted node memory in aggregate and no per-node packing matches
        # it: solve with every node explicit, within the cost of the packing we already have.
        limits = {t: min(EXACT_NODES_PER_TYPE, int(placed / shapes[t].price + 1e-9))
                  for t in {p.shape for p in cg.patterns}}
        exact_nodes = integer_nodes(cg.patterns, cls.count, shapes, limits, max(1.0, deadline - time.perf_counter()))
        if exact_nodes.cost < placed - 1e-9:
            built = fill_servers(exact_nodes.servers, cg.patterns, cls, dem)
            nodes = place_as_solved(built, exact_nodes.pods)
    solve_seconds = time.perf_counter() - start

    platform = float(sum(catalogue.platform.values()))
    instances = {shapes[t].name: n for t, n in sorted(nodes.items(), key=lambda kv: shapes[kv[0]].name) if n > 0}
    cost = sum(shapes[t].price * n for t, n in nodes.items()) + platform
    bound = min(lower + platform, cost)
    ids = _server_ids(built, shapes)

    servers_json, pods = [], []
    for k in sorted(range(len(built)), key=lambda k: ids[k]):
        s = built[k]
        shape = shapes[s.shape]
        mem, util, mean_latency, slowest = pod_figures(s, dem)
        accel = shape.accelerator
        model_ids = [dem.model_ids[m] for m in s.models]
        servers_json.append({
            "id": ids[k], "instance_type": shape.name, "processor": shape.processor, "replicas": s.replicas,
            "placements": [{"instance_index": n, "device_index": d} for n, d in s.placements],
            "models": model_ids,
            "requests": {"cpu_m": shape.pod_cpu_m, "memory_mib": memory_request_mib(s),
                         **({"accelerator": {"name": accel[0], "count": accel[1]}} if accel else {})},
            "memory_budget_mib": memory_request_mib(s),
            "predicted": {"utilisation": round(util, 6),
                          "p90_ms": round(predicted_p90_ms(shape.cores_per_device, util, mean_latency, slowest), 3)},
        })
        pods.append(PodLoad(ids[k], shape.name, shape.processor, s.replicas, shape.device_memory_cap_mib,
                            opts.max_utilization,
                            tuple(ModelLoad(dem.model_ids[m], float(dem.d[m, s.shape]), float(dem.u[m, s.shape]) / s.replicas)
                                  for m in s.models)))
        del mem
    plan = Plan.model_validate({
        "schema": 1,
        "inputs": dict(inputs or {}),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items() if k != "time_limit_s"},
        "solver": {"name": "exact-enumeration+highs" if exact else "column-generation+highs", "classes": len(cls),
                   "columns": len(cg.patterns), "rounds": rounds, "lp_converged": converged,
                   "lp_per_hour": round(lp_value + platform, 6), "fluid_per_hour": round(fluid.value + platform, 6),
                   "time_limit_s": opts.time_limit_s},
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


def plan_summary(plan: Plan) -> Tuple[float, float, float]:
    return plan.cost_per_hour, plan.lower_bound_per_hour, plan.gap
