"""Second looks at a plan: nodes that rounding left part-empty are re-planned, part-filled
servers are emptied into the others' free room, and first-fit decreasing stands in wherever it
packs cheaper."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from packing.model.demand import Demand
from packing.model.resources import NodeShape, PackingOptions, node_groups, nodes_price, pod_caps
from packing.place.assemble import BuiltServer, Solved, place_on_nodes
from packing.place.fleet import Fleet, tighten
from packing.solve.baselines import BaselineResult


def _half_empty_nodes(solved: Solved, shapes: Sequence[NodeShape]) -> Tuple[set, List[int]]:
    """Nodes whose empty slots are worth a whole node of the cheapest size of their processor,
    and the servers that live only on them: rounding left these nodes, and their models may pack
    cheaper elsewhere. Only nodes all of whose servers move are counted, so moving frees them."""
    group = node_groups(shapes)
    on: Dict[Tuple[int, int], set] = {}
    for k, s in enumerate(solved.built):
        for n, _ in s.placements:
            on.setdefault((group[s.shape], n), set()).add(k)
    cheapest = {}
    for sh in shapes:
        cheapest[sh.processor] = min(cheapest.get(sh.processor, sh.price), sh.price)
    free = set()
    for key, ks in on.items():
        sh = shapes[key[0]]
        used = sum(1 for k in ks for n, _ in solved.built[k].placements if (group[solved.built[k].shape], n) == key)
        # Worth a try when its empty slots cost at least a whole node of the cheapest size.
        if sh.slots > 1 and (sh.slots - used) * sh.price / sh.slots >= cheapest[sh.processor] - 1e-9:
            free.add(key)
    while True:
        movers = {k for k, s in enumerate(solved.built) if {(group[s.shape], n) for n, _ in s.placements} <= free}
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
    caps = pod_caps(s)
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
    built = [BuiltServer(t, 1, sorted(ms), host_per_pod=dem.host_per_pod(ms, t)) for ms in members]
    nodes = place_on_nodes(built, dem.shapes, spread=1)
    return Solved(built, nodes, 0.0, {})


def improve(solved: Solved, dem: Demand, shapes: Sequence[NodeShape], opts: PackingOptions, deadline: float,
            say: Callable[[str], None], solve: Callable[..., Solved]) -> Solved:
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
        if other is not None and nodes_price(other.nodes, shapes) < nodes_price(sub.nodes, shapes):
            sub = other
    new_cost = nodes_price(sub.nodes, shapes)
    if new_cost >= old_cost - 1e-9:
        return solved
    say(f"re-planned {len(models)} models from part-empty nodes: ${old_cost:.3f}/h -> ${new_cost:.3f}/h")
    gone = set(movers)
    keep = [s for k, s in enumerate(solved.built) if k not in gone]
    group = node_groups(shapes)
    renumber: Dict[Tuple[int, int], int] = {}
    used: Dict[int, int] = {}
    for s in keep:
        places = []
        g = group[s.shape]
        for n, d in s.placements:
            if (g, n) not in renumber:
                renumber[g, n] = used.get(g, 0)
                used[g] = used.get(g, 0) + 1
            places.append((renumber[g, n], d))
        s.placements = places
    for s in sub.built:
        offset = used.get(group[s.shape], 0)
        s.placements = [(n + offset, d) for n, d in s.placements]
        s.models = [models[m] for m in s.models]
    for t, n in sub.nodes.items():
        used[t] = used.get(t, 0) + n
    return Solved(keep + sub.built, used, solved.lower, solved.info)


def tighten_plan(solved: Solved, dem: Demand, shapes: Sequence[NodeShape], opts: PackingOptions, deadline: float,
                 say: Callable[[str], None]) -> Solved:
    """Empty part-filled servers into the others' free room (`fleet.tighten`), then keep the
    cheaper of the nodes as they are (emptied ones dropped) and a fresh placement of the pods.
    The room is real: patterns were priced at each class's largest member."""
    fleet = Fleet.of_plan(solved.built, dem, opts)
    emptied = tighten(fleet, deadline)
    info = {**solved.info, "servers_emptied": emptied}
    if not emptied:
        return Solved(solved.built, solved.nodes, solved.lower, info)
    renumber, kept = fleet.pool.compact()
    live = [s for s in fleet.servers if s.models]
    held = [[(renumber[s.shape, n], d) for n, d in s.placements] for s in live]
    for s in live:
        s.placements = []
    fresh = place_on_nodes(live, shapes, spread=opts.min_replicas)
    if nodes_price(kept, shapes) < nodes_price(fresh, shapes) - 1e-9:
        for s, places in zip(live, held, strict=True):
            s.placements = places
        fresh = kept
    say(f"emptied {emptied} part-filled servers into the others' room: "
        f"${nodes_price(solved.nodes, shapes):.3f}/h -> ${nodes_price(fresh, shapes):.3f}/h")
    return Solved(live, fresh, solved.lower, info)


def _baseline_offsets(result: BaselineResult, shapes: Sequence[NodeShape]) -> Tuple[Dict[int, int], Dict[int, int]]:
    """The baseline numbers nodes per shape: where each shape's nodes start among its type's, and
    the nodes per type."""
    per_shape: Dict[int, int] = {}
    for b in result.servers:
        per_shape[b.shape] = max(per_shape.get(b.shape, 0), max(b.nodes) + 1)
    group = node_groups(shapes)
    offset: Dict[int, int] = {}
    per_type: Dict[int, int] = {}
    for t in sorted(per_shape):
        offset[t] = per_type.get(group[t], 0)
        per_type[group[t]] = offset[t] + per_shape[t]
    return offset, per_type


def from_baseline(result: BaselineResult, dem: Demand) -> List[BuiltServer]:
    offset, _ = _baseline_offsets(result, dem.shapes)
    devices: Dict[Tuple[int, int], int] = {}
    built = []
    for b in result.servers:
        s = BuiltServer(b.shape, b.replicas, sorted(int(m) for m in b.models))
        s.host_per_pod = dem.host_per_pod(s.models, b.shape)
        for n in b.nodes:
            d = devices.get((b.shape, n), 0)
            devices[b.shape, n] = d + 1
            s.placements.append((offset[b.shape] + int(n), d))
        built.append(s)
    return built


def ffd_nodes(result: BaselineResult, shapes: Sequence[NodeShape]) -> Dict[int, int]:
    return _baseline_offsets(result, shapes)[1]


