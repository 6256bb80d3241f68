"""plan_servers: profiles + traffic + instance catalogue -> a Plan with a proven lower bound."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from contracts import InstanceCatalogue, ModelSpec, Plan, Profile
from packing.assemble import BuiltServer, fill_servers, memory_request_mib, place_as_solved, place_on_nodes, pod_figures
from packing.baselines import BaselineResult, first_fit_decreasing_by_price
from packing.classes import build_classes
from packing.colgen import ColumnGeneration
from packing.demand import Demand, build_demand
from packing.formulation import ServerGroup, choose_shapes, fluid_relaxation, integer_master, integer_nodes
from packing.knapsack import quiet_banner
from packing.loads import ModelLoad, PodLoad
from packing.queueing import predicted_p90_ms
from packing.resources import NodeShape, PackingOptions, node_shapes

# Below this many models every model is its own class: classes are exact and cheap.
EXACT_CLASSES_UP_TO = 60
CLASS_RESOLUTION = 0.02  # memory runs: memory usually binds, so they are narrow
LOAD_RESOLUTION = 0.5  # load buckets: coarse classes keep the LP small; hi/lo keep it honest
EXACT_PATTERNS_UP_TO = 5_000
EXACT_NODES_PER_TYPE = 12
SMALL_INTEGER_MASTER_UP_TO = 300


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


@dataclass
class Solved:
    built: List[BuiltServer]
    nodes: Dict[int, int]  # shape -> nodes
    lower: float  # proven bound on instance $/h
    info: Dict[str, object]


def solve(dem: Demand, shapes: Sequence[NodeShape], opts: PackingOptions, deadline: float,
          say: Callable[[str], None]) -> Solved:
    """Servers and their placements for the models of `dem`, with a proven bound."""
    start = time.perf_counter()
    budget = max(deadline - start, 1.0)
    n = len(dem.model_ids)
    resolution = 0.0 if n <= EXACT_CLASSES_UP_TO else CLASS_RESOLUTION
    cls = build_classes(dem, opts.max_utilization, resolution, LOAD_RESOLUTION)
    say(f"{n} models in {len(cls)} classes over {len(shapes)} instance types")

    fluid = fluid_relaxation(cls, shapes, opts.min_replicas)
    say(f"fluid relaxation: ${fluid.value:.3f}/h")
    cg = ColumnGeneration(cls, shapes, opts.min_replicas)
    exact = n <= EXACT_CLASSES_UP_TO and cg.enumerate_all(limit=EXACT_PATTERNS_UP_TO)
    if exact:
        # Small enough to list every server pattern: the integer master over all of them is exact
        # (up to the node-level host memory it aggregates), and its proven optimum is a bound.
        ip = integer_master(cg.patterns, cls.count, shapes, time_limit=max(1.0, deadline - time.perf_counter()))
        chosen = ip.servers
        lower = max(fluid.value, ip.cost if ip.optimal else 0.0)
        lp_value, rounds, converged = ip.cost, 0, ip.optimal
        say(f"exact: every pattern listed ({len(cg.patterns)}), integer master ${ip.cost:.3f}/h")
    else:
        result = cg.run(start + 0.45 * budget, warm=(fluid.pi, fluid.rho, fluid.servers),
                        progress=lambda it, v, b: say(f"column generation: round {it}, LP ${v:.3f}/h, bound ${b:.3f}/h"))
        say(f"LP ${result.lp_value:.3f}/h after {result.iterations} rounds ({len(result.patterns)} columns); "
            f"bound ${result.lower_bound:.3f}/h")
        chosen = cg.integer_solution(start + 0.8 * budget)
        say(f"integer: iterated rounding ${cg.pod_cost(chosen):.3f}/h of pods")
        chosen = rehome(cg, chosen, shapes, max(0.5, start + 0.85 * budget - time.perf_counter()))
        lower = max(fluid.value, result.lower_bound)
        lp_value, rounds, converged = result.lp_value, result.iterations, result.converged
    built = fill_servers(chosen, cg.patterns, cls, dem)
    nodes = place_on_nodes(built, shapes, spread=opts.min_replicas)
    placed = sum(shapes[t].price * n for t, n in nodes.items())
    if not exact and n <= SMALL_INTEGER_MASTER_UP_TO and time.perf_counter() < deadline - 1.0:
        # Small problems: the integer master over every generated column sometimes rounds better
        # than iterated rounding; keep whichever packs cheaper.
        cg.hot_columns()
        subset = list(cg.patterns)
        ip = integer_master(subset, cls.count, shapes, time_limit=max(1.0, deadline - time.perf_counter()))
        other = fill_servers(ip.servers, subset, cls, dem)
        other_nodes = place_on_nodes(other, shapes, spread=opts.min_replicas)
        other_cost = sum(shapes[t].price * n for t, n in other_nodes.items())
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
            nodes = place_as_solved(built, exact_nodes.pods)
    info = {"name": "exact-enumeration+highs" if exact else "column-generation+highs", "classes": len(cls),
            "columns": len(cg.patterns), "rounds": rounds, "lp_converged": converged,
            "lp_per_hour": lp_value, "fluid_per_hour": fluid.value}
    return Solved(built, nodes, lower, info)


def _half_empty_nodes(solved: Solved, shapes: Sequence[NodeShape]) -> Tuple[set, List[int]]:
    """Nodes whose empty slots are worth a whole node of the cheapest size of their processor,
    and the servers that live only on them: rounding left these nodes, and their models may pack
    cheaper elsewhere. Only nodes all of whose servers move are counted, so moving frees them."""
    on: Dict[Tuple[int, int], set] = {}
    for k, s in enumerate(solved.built):
        for n, _ in s.placements:
            on.setdefault((s.shape, n), set()).add(k)
    cheapest = {}
    for sh in shapes:
        cheapest[sh.processor] = min(cheapest.get(sh.processor, sh.price), sh.price)
    free = set()
    for key, ks in on.items():
        sh = shapes[key[0]]
        used = sum(1 for k in ks for n, _ in solved.built[k].placements if (solved.built[k].shape, n) == key)
        # Worth a try when its empty slots cost at least a whole node of the cheapest size.
        if sh.slots > 1 and (sh.slots - used) * sh.price / sh.slots >= cheapest[sh.processor] - 1e-9:
            free.add(key)
    while True:
        movers = {k for k, s in enumerate(solved.built) if {(s.shape, n) for n, _ in s.placements} <= free}
        kept = {key for key in free if on[key] <= movers}
        if kept == free:
            return free, sorted(movers)
        free = kept


def first_fit_on(dem: Demand, t: int, opts: PackingOptions) -> Optional[Solved]:
    """All of `dem`'s models on shape t, first fit by decreasing memory, one pod per server.
    None where a model may not go there (or is hot there) or servers need several replicas."""
    s = dem.shapes[t]
    if opts.min_replicas != 1 or not dem.eligible[:, t].all() or dem.hot[:, t].any():
        return None
    caps = (s.device_memory_cap_mib * (1 + 1e-9), s.utilisation_cap * (1 + 1e-9), (s.host_alloc_mib - s.pod_base_mib) * (1 + 1e-9))
    pods: List[List[float]] = []
    members: List[List[int]] = []
    for m in np.argsort(-dem.d[:, t], kind="stable").tolist():
        need = (dem.d[m, t], dem.u[m, t], dem.h[m, t])
        for k, used in enumerate(pods):
            if all(u + x <= c for u, x, c in zip(used, need, caps, strict=True)):
                pods[k] = [u + x for u, x in zip(used, need, strict=True)]
                members[k].append(m)
                break
        else:
            pods.append(list(need))
            members.append([m])
    built = [BuiltServer(t, 1, sorted(ms), host_per_pod=s.pod_base_mib + float(dem.h[ms, t].sum())) for ms in members]
    nodes = place_on_nodes(built, dem.shapes, spread=1)
    return Solved(built, nodes, 0.0, {})


def improve(solved: Solved, dem: Demand, shapes: Sequence[NodeShape], opts: PackingOptions, deadline: float,
            say: Callable[[str], None]) -> Solved:
    """Re-plan the models on half-empty nodes on their own (small, so often exactly) and keep the
    result when it costs less than those nodes."""
    free, movers = _half_empty_nodes(solved, shapes)
    if not movers or time.perf_counter() > deadline - 0.5:
        return solved
    old_cost = sum(shapes[t].price for t, _ in free)
    models = sorted({m for k in movers for m in solved.built[k].models})
    part = dem.subset(models)
    sub = solve(part, shapes, opts, deadline, lambda _m: None)
    for t in range(len(shapes)):
        other = first_fit_on(part, t, opts)
        if other is not None and sum(shapes[u].price * n for u, n in other.nodes.items()) < \
                sum(shapes[u].price * n for u, n in sub.nodes.items()):
            sub = other
    new_cost = sum(shapes[t].price * n for t, n in sub.nodes.items())
    if new_cost >= old_cost - 1e-9:
        return solved
    say(f"re-planned {len(models)} models from part-empty nodes: ${old_cost:.3f}/h -> ${new_cost:.3f}/h")
    gone = set(movers)
    keep = [s for k, s in enumerate(solved.built) if k not in gone]
    renumber: Dict[Tuple[int, int], int] = {}
    used: Dict[int, int] = {}
    for s in keep:
        places = []
        for n, d in s.placements:
            if (s.shape, n) not in renumber:
                renumber[s.shape, n] = used.get(s.shape, 0)
                used[s.shape] = used.get(s.shape, 0) + 1
            places.append((renumber[s.shape, n], d))
        s.placements = places
    for s in sub.built:
        offset = used.get(s.shape, 0)
        s.placements = [(n + offset, d) for n, d in s.placements]
        s.models = [models[m] for m in s.models]
    for t, n in sub.nodes.items():
        used[t] = used.get(t, 0) + n
    return Solved(keep + sub.built, used, solved.lower, solved.info)


def undominated(dem: Demand, shapes: Sequence[NodeShape]) -> List[int]:
    """Shapes worth considering. B is dominated by A (same processor, cores and caps) when one A
    node can take the place of any B node at no higher price: at least as many slots, as much
    pod memory, and room for whatever host memory B's pods could need. Dropping B changes no
    optimum, so a bound over the rest still holds for the whole catalogue."""
    most_host = []
    for t, s in enumerate(shapes):
        ok = dem.eligible[:, t]
        h, d = dem.h[ok, t], dem.d[ok, t]
        ratio = float(np.max(h / np.maximum(d, 1e-9), initial=0.0))
        per_pod = s.pod_base_mib + min(float(h.sum()), s.device_memory_cap_mib * ratio, s.host_alloc_mib)
        most_host.append(min(per_pod, s.host_alloc_mib))
    keep = []
    for b, sb in enumerate(shapes):
        dominated = False
        for a, sa in enumerate(shapes):
            if a == b or (sa.processor, sa.cores_per_device, sa.utilisation_cap) != (sb.processor, sb.cores_per_device, sb.utilisation_cap):
                continue
            better = (sa.slots >= sb.slots and sa.price <= sb.price and sa.device_memory_cap_mib >= sb.device_memory_cap_mib
                      and sa.pod_base_mib <= sb.pod_base_mib and sa.host_alloc_mib >= most_host[b]
                      and sa.host_alloc_mib >= min(sb.host_alloc_mib, sb.slots * most_host[b]))
            strictly = (sa.price, sa.name) < (sb.price, sb.name)
            if better and strictly:
                dominated = True
                break
        if not dominated:
            keep.append(b)
    return keep


def from_baseline(result: BaselineResult, dem: Demand) -> List[BuiltServer]:
    devices: Dict[Tuple[int, int], int] = {}
    built = []
    for b in result.servers:
        s = BuiltServer(b.shape, b.replicas, sorted(int(m) for m in b.models))
        s.host_per_pod = dem.shapes[b.shape].pod_base_mib + float(dem.h[s.models, b.shape].sum())
        for n in b.nodes:
            d = devices.get((b.shape, n), 0)
            devices[b.shape, n] = d + 1
            s.placements.append((int(n), d))
        built.append(s)
    return built


def ffd_nodes(result: BaselineResult) -> Dict[int, int]:
    nodes: Dict[int, int] = {}
    for b in result.servers:
        nodes[b.shape] = max(nodes.get(b.shape, 0), max(b.nodes) + 1)
    return nodes


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
    shapes = node_shapes(catalogue, opts)
    dem = build_demand(models, profiles, shapes, opts)
    keep = undominated(dem, shapes)
    if len(keep) < len(shapes):
        say(f"{len(shapes) - len(keep)} instance types dominated by others: "
            + ", ".join(s.name for t, s in enumerate(shapes) if t not in keep))
        shapes = [shapes[t] for t in keep]
        dem = dem.on_shapes(keep)
    solved = solve(dem, shapes, opts, start + 0.9 * opts.time_limit_s, say)
    solved = improve(solved, dem, shapes, opts, deadline, say)
    # First-fit decreasing is fast and, on some catalogues, better than a column generation
    # that ran out of time: the plan is never dearer than it.
    ffd = first_fit_decreasing_by_price(dem, shapes, opts, platform=0.0)
    ours = sum(shapes[t].price * n for t, n in solved.nodes.items())
    if ffd.cost_per_hour < ours - 1e-9:
        say(f"first-fit decreasing beats the rounded LP: ${ffd.cost_per_hour:.3f}/h against ${ours:.3f}/h")
        solved = Solved(from_baseline(ffd, dem), dict(ffd_nodes(ffd)), solved.lower, {**solved.info, "integer": "first-fit decreasing"})
    built, nodes, lower = solved.built, solved.nodes, solved.lower
    info = solved.info
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
        "solver": {**info, "lp_per_hour": round(float(info["lp_per_hour"]) + platform, 6),
                   "fluid_per_hour": round(float(info["fluid_per_hour"]) + platform, 6),
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
