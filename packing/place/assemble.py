"""From whole numbers of server patterns to concrete servers on concrete nodes.

Each pattern slot of class i is filled with a real member of class i (patterns were priced with
the class maxima, so any member fits). Pods then go onto nodes of their shape: best fit by host
memory, the replicas of one server on distinct nodes where the nodes allow, opening a node only
when no open one has a free slot and memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Protocol, Sequence, Tuple

import numpy as np

from packing.model.classes import Classes
from packing.model.demand import Demand
from packing.model.resources import NodeShape, node_groups
from packing.place.nodes import NodePool


class ServerTemplate(Protocol):
    """What filling needs of a server the solve chose (its patterns, packing/solve/columns.py):
    `counts[k] = (class, models of it in each pod)`."""

    shape: int
    counts: Tuple[Tuple[int, int], ...]
    replicas: int


@dataclass
class BuiltServer:
    shape: int
    replicas: int
    models: List[int]  # model indices into Demand
    host_per_pod: float = 0.0
    placements: List[Tuple[int, int]] = field(default_factory=list)  # (node index, device index)
    pattern: int = -1


@dataclass
class Solved:
    built: List[BuiltServer]
    # Nodes per instance type, keyed by its first shape (`resources.node_groups`); a placement's
    # node index counts among its type's nodes, which the type's SLO tiers share.
    nodes: Dict[int, int]
    lower: float  # proven bound on instance $/h
    info: Dict[str, object]


def fill_servers(chosen: Dict[int, int], patterns: Sequence[ServerTemplate], cls: Classes, dem: Demand) -> List[BuiltServer]:
    pools = [list(m) for m in cls.members]
    cursor = [0] * len(pools)
    built: List[BuiltServer] = []
    for j in sorted(chosen):
        p = patterns[j]
        for _ in range(chosen[j]):
            models: List[int] = []
            for i, a in p.counts:
                take = pools[i][cursor[i]:cursor[i] + a]
                cursor[i] += len(take)
                models.extend(int(m) for m in take)
            if models:
                built.append(BuiltServer(p.shape, p.replicas, sorted(models), pattern=j))
    left = sum(len(p) - c for p, c in zip(pools, cursor))
    if left:
        raise AssertionError(f"{left} models left unplaced by the integer solution")
    for s in built:
        s.host_per_pod = dem.host_per_pod(s.models, s.shape)
    return built


def place_on_nodes(servers: List[BuiltServer], shapes: Sequence[NodeShape], spread: int) -> Dict[int, int]:
    """Assign every pod a (node, device) with the one placer (`nodes.NodePool.place`: best fit by
    host memory, a new node only when none has room); returns nodes used per shape. `spread`:
    the first `spread` replicas of a server must land on distinct nodes (redundancy across nodes)."""
    pool = NodePool(shapes)
    order = sorted(range(len(servers)), key=lambda k: (servers[k].shape, -servers[k].host_per_pod * servers[k].replicas, k))
    for k in order:
        s = servers[k]
        for rep in range(s.replicas):
            here = {n for n, _ in s.placements}
            s.placements.append(pool.place(s.shape, k, s.host_per_pod, here, must_be_apart=rep < spread))
    return pool.compact()[1]


def place_as_solved(servers: List[BuiltServer], pods: Sequence[Tuple[int, int, int]],
                    shapes: Sequence[NodeShape]) -> Dict[int, int]:
    """Placements from an exact node-level solution: `pods` lists (pattern, shape, node) once per
    pod; each pattern's pods are dealt round-robin to its servers. Nodes are numbered per
    instance type (`node_groups`); returns nodes per type."""
    type_of = node_groups(shapes)
    by_pattern: Dict[int, List[Tuple[int, int]]] = {}
    for j, t, k in sorted(pods):
        by_pattern.setdefault(j, []).append((t, k))
    mine: Dict[int, List[BuiltServer]] = {}
    for s in servers:
        mine.setdefault(s.pattern, []).append(s)
    renumber: Dict[Tuple[int, int], int] = {}
    devices: Dict[Tuple[int, int], int] = {}
    for j, group in mine.items():
        slots = by_pattern[j]
        for q, s in enumerate(group):
            for t, k in slots[q::len(group)][: s.replicas]:
                g = type_of[t]
                if (t, k) not in renumber:
                    renumber[t, k] = sum(1 for (u, _) in renumber if type_of[u] == g)
                n = renumber[t, k]
                s.placements.append((n, devices.get((g, n), 0)))
                devices[g, n] = devices.get((g, n), 0) + 1
    used: Dict[int, int] = {}
    for t, _ in renumber:
        used[type_of[t]] = used.get(type_of[t], 0) + 1
    return used


def pod_figures(s: BuiltServer, dem: Demand) -> Tuple[float, float, float, float]:
    """(model memory per pod, utilisation per pod, arrival-weighted mean latency, slowest p90)."""
    t, idx = s.shape, np.asarray(s.models)
    mem = float(dem.d[idx, t].sum())
    util = float(dem.u[idx, t].sum()) / s.replicas
    rps = dem.rps[idx]
    lat = dem.latency[idx, t]
    mean_latency = float(np.dot(rps, lat) / rps.sum()) if rps.sum() > 0 else float(lat.mean())
    return mem, util, mean_latency, float(dem.p90[idx, t].max())


def memory_request_mib(s: BuiltServer) -> int:
    return int(math.ceil(s.host_per_pod))
