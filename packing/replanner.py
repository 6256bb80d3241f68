"""Re-planning from a previous plan: a small change to the inputs makes a small change to the fleet.

1. **Carry.** Every previous server keeps its id, instance type, models and (where they still fit)
   its pods' places. Removed models leave their server and nothing else moves. A server whose
   models no longer fit it (a profile grew, a processor went away, the SLO tightened) gives up the
   fewest models that make it fit again, largest first. Traffic changes only its `replicas`
   (`ceil(load / max_utilization)`): a model turning hot scales its server instead of reshuffling.
2. **Pack what is left.** New and displaced models go first into the free room of carried
   servers (those already restarting first), then onto new servers from the planner's own solver
   over just these models; new pods take free devices on open nodes before new nodes open.
3. **Consolidate** (only with `move_cost` or `max_moves`): servers on the emptiest nodes are
   re-packed together when the $/h saved beats `move_cost` per model moved, or is the largest
   within `max_moves`.

Kept servers keep their ids; new ones get numbers never used before. The bound is the fresh
fluid bound (valid for every plan of these inputs). Moves and restarts come from `packing.report.diff`.
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from contracts import InstanceCatalogue, ModelSpec, Plan, PreviousPlan, Profile
from packing import budget as shares
from packing.budget import TimeBudget
from packing.model.classes import build_classes
from packing.model.demand import Demand, build_demand
from packing.model.dominance import undominated
from packing.model.resources import TOLERANCE, PackingOptions, node_shapes, pod_caps
from packing.place.assemble import BuiltServer, Solved
from packing.place.fleet import Fleet
from packing.place.nodes import NodePool
from packing.planner import pack
from packing.report.diff import plan_diff
from packing.report.plan_file import PlanResult, write_plan
from packing.solve.bound import fluid_relaxation
from packing.solve.knapsack import quiet_banner
from packing.solve.solver import CLASS_RESOLUTION, EXACT_CLASSES_UP_TO, LOAD_RESOLUTION

SERVER_ID = re.compile(r"^([a-z0-9]+)-(\d+)$")
CONSOLIDATION_TRIALS = 6  # candidate sets of emptiest nodes tried: 1, 2, 4, ... nodes


@dataclass(frozen=True)
class MoveBudget:
    """How consolidation trades cost against moves: `move_cost` $/h charged per moved model, or at
    most `max_moves` moved models; neither: no consolidation (only forced moves)."""

    move_cost: Optional[float] = None
    max_moves: Optional[int] = None

    @property
    def active(self) -> bool:
        return self.move_cost is not None or self.max_moves is not None

    def worth(self, saving: float, moves: int) -> float:
        """Net gain of a consolidation, or -inf where it is not allowed."""
        if saving <= 1e-9 or (self.max_moves is not None and moves > self.max_moves):
            return -math.inf
        return saving - (self.move_cost or 0.0) * moves


NO_CONSOLIDATION = MoveBudget()


# -- the maths of one server: pure functions -------------------------------------------------------

def replicas_needed(models: Sequence[int], t: int, dem: Demand, opts: PackingOptions) -> int:
    """Pods a server of these models needs on shape t: utilisation per pod within the cap."""
    load = float(dem.u[list(models), t].sum())
    return max(opts.min_replicas, int(math.ceil(load / dem.shapes[t].utilisation_cap - TOLERANCE)))


def best_tier(models: Sequence[int], shapes: Sequence[int], dem: Demand) -> Optional[int]:
    """Of one instance type's SLO tiers, the one where most of a carried server's models may stay,
    the highest utilisation cap among those (fewest replicas)."""
    if not shapes:
        return None
    return max(shapes, key=lambda t: (int(dem.eligible[list(models), t].sum()), dem.shapes[t].utilisation_cap, -t))


def fit_server(models: Sequence[int], t: int, dem: Demand) -> Tuple[List[int], List[int]]:
    """(models that stay, models that leave) for a carried server on shape t: those no longer
    eligible leave, then the largest by device memory, then by host memory, until a pod holds
    the rest. Utilisation never evicts: replicas absorb it."""
    shape = dem.shapes[t]
    stay = [m for m in models if dem.eligible[m, t]]
    out = [m for m in models if not dem.eligible[m, t]]
    mem_cap, _, host_cap = pod_caps(shape)
    while stay and float(dem.d[stay, t].sum()) > mem_cap:
        out.append(stay.pop(int(np.argmax(dem.d[stay, t]))))
    while stay and float(dem.h[stay, t].sum()) > host_cap:
        out.append(stay.pop(int(np.argmax(dem.h[stay, t]))))
    return stay, out


def fresh_ids(count_by_processor: Mapping[str, int], used: Mapping[str, int]) -> Dict[str, List[str]]:
    """`count` new ids per processor, numbered after the highest ever used there."""
    return {p: [f"{p}-{used.get(p, -1) + 1 + i:04d}" for i in range(n)] for p, n in count_by_processor.items()}


def id_high_water(previous: Plan) -> Dict[str, int]:
    """The highest id number used per processor: in the previous plan, and before it (the
    `previous` block carries it forward, so a retired id is never reused)."""
    high: Dict[str, int] = {}
    earlier = (previous.previous.model_extra or {}).get("id_high_water", {}) if previous.previous else {}
    for p, n in earlier.items():
        high[p] = max(high.get(p, -1), int(n))
    for s in previous.servers:
        match = SERVER_ID.match(s.id)
        if match:
            high[match[1]] = max(high.get(match[1], -1), int(match[2]))
    return high


def carry(previous: Plan, dem: Demand, opts: PackingOptions) -> Tuple[Fleet, List[int]]:
    """Step 1: the previous servers on the current inputs, and the models left to pack."""
    index = {m: i for i, m in enumerate(dem.model_ids)}
    tiers_of: Dict[str, List[int]] = {}
    for t, s in enumerate(dem.shapes):
        tiers_of.setdefault(s.name, []).append(t)
    fleet = Fleet(dem, opts, pool=NodePool(dem.shapes))
    placed = set()
    pending: List[int] = []
    for prev in sorted(previous.servers, key=lambda s: s.id):
        present = [index[m] for m in prev.models if m in index]
        placed.update(present)
        t = best_tier(present, tiers_of.get(prev.instance_type, []), dem)
        if t is None:  # its instance type is no longer allowed
            pending.extend(present)
            continue
        stay, out = fit_server(present, t, dem)
        pending.extend(out)
        if not stay:
            continue
        replicas = replicas_needed(stay, t, dem, opts)
        s = BuiltServer(t, replicas, stay, host_per_pod=fleet.host_per_pod(stay, t))
        k = len(fleet.servers)
        fleet.servers.append(s)
        fleet.ids.append(prev.id)
        if len(stay) != len(prev.models):
            fleet.changed.add(k)
        # Pods stay where they were while they fit; the others (and new replicas) are placed later.
        for p in prev.placements[:replicas]:
            if fleet.pool.occupy(t, p.instance_index, p.device_index, k, s.host_per_pod):
                s.placements.append((p.instance_index, p.device_index))
        if len(s.placements) < replicas:
            fleet.unplaced[k] = replicas - len(s.placements)
    pending.extend(i for i in range(len(dem.model_ids)) if i not in placed)
    return fleet, sorted(set(pending))


def pack_new(fleet: Fleet, pending: Sequence[int], deadline: float, say: Callable[[str], None]) -> None:
    """Step 2: slack first, then new servers from the solver over just the rest; all pods placed."""
    rest = fleet.fill_slack(pending)
    if len(pending):
        say(f"{len(pending) - len(rest)} of {len(pending)} models to place fit carried servers' free room")
    if rest:
        dem = fleet.dem
        part = dem.subset(rest)
        keep = undominated(part, dem.shapes)
        solved = pack(part.on_shapes(keep), [dem.shapes[t] for t in keep], fleet.opts,
                      time.perf_counter(), max(deadline, time.perf_counter() + 1.0), lambda _m: None)
        for s in solved.built:
            s.shape = keep[s.shape]
            s.models = [rest[m] for m in s.models]
            s.host_per_pod = fleet.host_per_pod(s.models, s.shape)
        fleet.add_new(solved.built)
        say(f"{len(rest)} models on {len(solved.built)} new servers")
    fleet.place_pending_pods()


def emptiest_nodes(fleet: Fleet) -> List[Tuple[int, int]]:
    """Open nodes, emptiest first: by the larger of their device and host memory fill."""
    fills = []
    for t, nodes in fleet.pool.nodes.items():
        shape = fleet.dem.shapes[t]
        for n, node in enumerate(nodes):
            if node.devices:
                fill = max(len(node.devices) / shape.slots, node.host_used / shape.host_alloc_mib)
                fills.append((fill, shape.price, t, n))
    return [(t, n) for _, _, t, n in sorted(fills, key=lambda f: (f[0], -f[1], f[2], f[3]))]


def consolidate(fleet: Fleet, budget: MoveBudget, deadline: float, say: Callable[[str], None]) -> Fleet:
    """Step 3: try re-packing the servers on the 1, 2, 4, ... emptiest nodes; keep the trial with
    the best net gain under the budget (or none)."""
    order = emptiest_nodes(fleet)
    before = fleet.cost()
    best, best_gain = fleet, 0.0
    for i in range(CONSOLIDATION_TRIALS):
        size = 2 ** i
        if size > len(order) or time.perf_counter() > deadline - 1.0:
            break
        nodes = set(order[:size])
        group = fleet.pool.group
        keys = [k for k, s in enumerate(fleet.servers) if s.models and any((group[s.shape], n) in nodes for n, _ in s.placements)]
        moves = fleet.moved_models(keys)
        if budget.max_moves is not None and moves > budget.max_moves:
            break
        # The demand and shapes are shared, read-only: only servers and nodes are copied.
        trial = copy.deepcopy(fleet, {id(fleet.dem): fleet.dem, id(fleet.opts): fleet.opts, id(fleet.pool.shapes): fleet.pool.shapes})
        models = trial.dissolve(keys)
        share = (deadline - time.perf_counter()) / (CONSOLIDATION_TRIALS - i)
        pack_new(trial, models, time.perf_counter() + share, lambda _m: None)
        gain = budget.worth(before - trial.cost(), moves)
        say(f"consolidation over {size} node(s): {moves} moves, ${before:.3f}/h -> ${trial.cost():.3f}/h")
        if gain > best_gain:
            best, best_gain = trial, gain
    return best


def fresh_bound(dem: Demand, opts: PackingOptions) -> float:
    """The fluid relaxation over every model, on undominated shapes: a lower bound on the instance
    $/h of any plan of these inputs, the re-plan included."""
    keep = undominated(dem, dem.shapes)
    part = dem.on_shapes(keep)
    resolution = 0.0 if len(dem.model_ids) <= EXACT_CLASSES_UP_TO else CLASS_RESOLUTION
    cls = build_classes(part, opts.max_utilization, resolution, LOAD_RESOLUTION)
    return fluid_relaxation(cls, [dem.shapes[t] for t in keep], opts.min_replicas).value


def finish(fleet: Fleet, previous: Plan) -> Tuple[List[BuiltServer], List[str], Dict[int, int]]:
    """Drop emptied servers and nodes, renumber nodes in their old order, name new servers."""
    renumber, counts = fleet.pool.compact()
    live = [k for k, s in enumerate(fleet.servers) if s.models]
    for k in live:
        s = fleet.servers[k]
        s.placements = [(renumber[s.shape, n], d) for n, d in s.placements]
    new = sorted((k for k in live if fleet.ids[k] is None),
                 key=lambda k: (fleet.dem.shapes[fleet.servers[k].shape].processor, fleet.servers[k].shape,
                                fleet.servers[k].placements[0], k))
    wanted: Dict[str, int] = {}
    for k in new:
        p = fleet.dem.shapes[fleet.servers[k].shape].processor
        wanted[p] = wanted.get(p, 0) + 1
    names = fresh_ids(wanted, id_high_water(previous))
    ids = {k: fleet.ids[k] for k in live if fleet.ids[k] is not None}
    for k in new:
        ids[k] = names[fleet.dem.shapes[fleet.servers[k].shape].processor].pop(0)
    return [fleet.servers[k] for k in live], [ids[k] for k in live], counts


def replan(
    previous: Plan,
    previous_digest: str,
    models: Sequence[ModelSpec],
    profiles: Mapping[str, Mapping[str, Profile]],
    profile_sources: Mapping[str, Mapping[str, str]],
    catalogue: InstanceCatalogue,
    opts: PackingOptions,
    budget: MoveBudget = NO_CONSOLIDATION,
    inputs: Optional[Mapping[str, str]] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> PlanResult:
    say = progress or (lambda _msg: None)
    quiet_banner()
    start = time.perf_counter()
    deadline = start + opts.time_limit_s
    dem = build_demand(models, profiles, node_shapes(catalogue, opts), opts)
    fleet, pending = carry(previous, dem, opts)
    say(f"carried {len(fleet.servers)} of {len(previous.servers)} servers; {len(pending)} models to place")
    share = shares.REPLAN_PACK_THEN_CONSOLIDATE if budget.active else shares.REPLAN_PACK
    pack_new(fleet, pending, TimeBudget(start, opts.time_limit_s).at(share), say)
    if budget.active:
        fleet = consolidate(fleet, budget, deadline, say)
    lower = fresh_bound(dem, opts)
    if dict(previous.inputs) == dict(inputs or {}) and previous.options == _options_json(opts):
        # Same inputs: the previous plan's bound (maybe a Farley bound, above the fluid one) holds.
        lower = max(lower, previous.lower_bound_per_hour - previous.platform_per_hour)
    built, ids, counts = finish(fleet, previous)
    info = {"name": "replan", "carried_servers": sum(1 for i in fleet.ids if i is not None),
            "lp_per_hour": lower, "fluid_per_hour": lower, "config_bound_per_hour": 0.0,
            "whole_node_bound_per_hour": 0.0,
            **({"move_cost": budget.move_cost} if budget.move_cost is not None else {}),
            **({"max_moves": budget.max_moves} if budget.max_moves is not None else {})}
    result = write_plan(Solved(built, counts, lower, info), dem, ids, models, profile_sources, catalogue, opts,
                        inputs, time.perf_counter() - start)
    diff = plan_diff(previous, result.plan)
    high = id_high_water(previous)
    for s in result.plan.servers:
        match = SERVER_ID.match(s.id)
        if match:
            high[match[1]] = max(high.get(match[1], -1), int(match[2]))
    result.plan.previous = PreviousPlan(
        digest=previous_digest, models_moved=len(diff["models_moved"]), servers_restarted=diff["servers_restarted"],
        servers_added=len(diff["servers_added"]), servers_removed=len(diff["servers_removed"]),
        models_added=len(diff["models_added"]), models_removed=len(diff["models_removed"]),
        cost_before_per_hour=previous.cost_per_hour, id_high_water=high)
    return result


def _options_json(opts: PackingOptions) -> Dict[str, object]:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items() if k != "time_limit_s"}
