"""Servers on concrete nodes, and the free room they have left for more models.

A plan's servers were packed from class patterns priced at each class's largest member, so the
real members leave room in most pods. Two users of that room:

- a re-plan (`packing.replanner`) puts new and displaced models into carried servers' room first;
- `tighten` empties a fresh plan's emptiest servers into the others' room: rounding the
  configuration LP leaves a tail of part-filled servers, and on single-device nodes each one
  emptied is a node saved.

Moving a model into a server checks everything the planner checks: model memory within the
pod's cap, utilisation at the server's replicas within the cap, host memory of the pod and of
every node its pods are on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from packing.model.demand import Demand
from packing.model.resources import PackingOptions, node_host_cap, nodes_price, pod_caps
from packing.place.assemble import BuiltServer
from packing.place.nodes import NodePool


@dataclass
class Fleet:
    """Servers (carried ones first, with their ids), their pods' nodes, and pods still to place."""

    dem: Demand
    opts: PackingOptions
    servers: List[BuiltServer] = field(default_factory=list)
    ids: List[Optional[str]] = field(default_factory=list)  # None: a new server
    changed: Set[int] = field(default_factory=set)  # carried servers whose model set changed
    pool: NodePool = None  # type: ignore[assignment]
    unplaced: Dict[int, int] = field(default_factory=dict)  # server -> pods still to place

    @classmethod
    def of_plan(cls, built: Sequence[BuiltServer], dem: Demand, opts: PackingOptions) -> Fleet:
        """A fresh plan's servers, on the nodes `assemble.place_on_nodes` gave them."""
        fleet = cls(dem, opts, pool=NodePool(dem.shapes))
        for k, s in enumerate(built):
            fleet.servers.append(s)
            fleet.ids.append(None)
            for n, d in s.placements:
                if not fleet.pool.occupy(s.shape, n, d, k, s.host_per_pod):
                    raise AssertionError(f"server {k}: its pod on node {n}, device {d} does not fit there")
        return fleet

    def host_per_pod(self, models: Sequence[int], t: int) -> float:
        return self.dem.host_per_pod(models, t)

    def cost(self) -> float:
        _, counts = self.pool.compact()
        return nodes_price(counts, self.dem.shapes)

    def moved_models(self, keys: Sequence[int]) -> int:
        """Models on these servers that were somewhere before (new models do not count as moves)."""
        return sum(len(self.servers[k].models) for k in keys if self.ids[k] is not None)

    def fill_slack(self, pending: Sequence[int]) -> List[int]:
        """Put pending models on existing servers where they fit (`Room`); the rest is returned."""
        if not self.servers or not pending:
            return list(pending)
        room = Room(self)
        placed, rest = room.assign(pending)
        room.apply(placed)
        return rest

    def add_model(self, k: int, m: int) -> None:
        s, h = self.servers[k], float(self.dem.h[m, self.servers[k].shape])
        for n, _ in s.placements:
            self.pool.grow(s.shape, n, h)
        s.models.append(m)
        s.host_per_pod += h
        if self.ids[k] is not None:
            self.changed.add(k)

    def add_new(self, built: Sequence[BuiltServer]) -> None:
        for s in built:
            s.placements = []
            self.servers.append(s)
            self.ids.append(None)
            self.unplaced[len(self.servers) - 1] = s.replicas

    def place_pending_pods(self) -> None:
        for k in sorted(self.unplaced):
            s = self.servers[k]
            for _ in range(self.unplaced[k]):
                here = {n for n, _ in s.placements}
                s.placements.append(self.pool.place(s.shape, k, s.host_per_pod, here,
                                                    must_be_apart=len(s.placements) < self.opts.min_replicas))
        self.unplaced = {}

    def dissolve(self, keys: Sequence[int]) -> List[int]:
        """Take servers out (their pods leave their nodes); their models are returned."""
        models: List[int] = []
        for k in sorted(keys):
            s = self.servers[k]
            for n, d in s.placements:
                node = self.pool.node(s.shape, n)
                del node.devices[d]
                node.host_used -= s.host_per_pod
            models.extend(s.models)
            s.models, s.placements, s.replicas = [], [], 0
            self.unplaced.pop(k, None)
        return models


class Room:
    """What each server of a fleet still holds, as arrays, so that many trial moves stay cheap.

    `assign` is a dry run (nothing changes); `apply` makes its moves and keeps the arrays true."""

    def __init__(self, fleet: Fleet) -> None:
        dem, servers = fleet.dem, fleet.servers
        self.fleet = fleet
        self.shape = np.array([s.shape for s in servers], int)
        self.replicas = np.array([max(s.replicas, 1) for s in servers], float)
        self.alive = np.array([bool(s.models) for s in servers])  # dissolved servers take nothing
        self.mem = np.array([float(dem.d[s.models, s.shape].sum()) for s in servers])
        self.load = np.array([float(dem.u[s.models, s.shape].sum()) for s in servers])
        self.host = np.array([s.host_per_pod for s in servers])
        caps = np.array([pod_caps(dem.shapes[t]) for t in self.shape]).reshape(-1, 3)
        self.mem_cap, self.load_cap = caps[:, 0], caps[:, 1]
        self.host_cap = np.array([node_host_cap(dem.shapes[t]) for t in self.shape])
        # Servers already restarting first: a model put there restarts nothing more.
        self.later = np.ones(len(servers), int)
        self.later[list(fleet.changed)] = 0

    def assign(self, models: Sequence[int], exclude: Sequence[int] = ()) -> Tuple[List[Tuple[int, int]], List[int]]:
        """(model, server) for each model that fits somewhere, largest first, best fit by memory;
        and the models that fit nowhere. Servers in `exclude` take none."""
        dem, fleet = self.fleet.dem, self.fleet
        mem, load, host = self.mem.copy(), self.load.copy(), self.host.copy()
        node_extra: Dict[Tuple[int, int], float] = {}
        alive = self.alive.copy()
        alive[list(exclude)] = False
        placed: List[Tuple[int, int]] = []
        rest: List[int] = []
        for m in sorted(models, key=lambda m: -float(dem.d[m, dem.eligible[m]].max())):
            d, u, h = dem.d[m, self.shape], dem.u[m, self.shape], dem.h[m, self.shape]
            ok = alive & dem.eligible[m, self.shape] & (mem + d <= self.mem_cap)
            ok &= ((load + u) / self.replicas <= self.load_cap) & (host + h <= self.host_cap)
            candidates = np.flatnonzero(ok)
            left = (self.mem_cap[candidates] - mem[candidates] - d[candidates]) / self.mem_cap[candidates]
            for k in candidates[np.lexsort((candidates, left, self.later[candidates]))].tolist():
                s = fleet.servers[k]
                if all(fleet.pool.host_room(s.shape, n) - node_extra.get((s.shape, n), 0.0) >= h[k] for n, _ in s.placements):
                    for n, _ in s.placements:
                        node_extra[s.shape, n] = node_extra.get((s.shape, n), 0.0) + float(h[k])
                    mem[k] += d[k]
                    load[k] += u[k]
                    host[k] += h[k]
                    placed.append((m, k))
                    break
            else:
                rest.append(m)
        return placed, rest

    def apply(self, placed: Sequence[Tuple[int, int]]) -> None:
        dem = self.fleet.dem
        for m, k in placed:
            t = self.shape[k]
            self.fleet.add_model(k, m)
            self.mem[k] += dem.d[m, t]
            self.load[k] += dem.u[m, t]
            self.host[k] += dem.h[m, t]

    def fill(self) -> np.ndarray:
        """How full each server's pods are: the larger of model memory and utilisation, of their caps."""
        return np.maximum(self.mem / self.mem_cap, self.load / self.replicas / self.load_cap)

    def close(self, keys: Sequence[int]) -> None:
        """These servers take no more models."""
        self.alive[list(keys)] = False

    def dissolve(self, k: int) -> List[int]:
        self.alive[k] = False
        self.mem[k] = self.load[k] = 0.0
        return self.fleet.dissolve([k])


def tighten(fleet: Fleet, deadline: float) -> int:
    """Empty servers into the others' free room, emptiest first, while time lasts; a server is
    emptied only when every one of its models fits elsewhere. A hot model's own server (the
    demand model gives it one, with its replicas) neither moves nor takes others. Returns the
    number of servers emptied."""
    room = Room(fleet)
    dem = fleet.dem
    fills = room.fill()
    hot = {k for k, s in enumerate(fleet.servers) if s.models and bool(dem.hot[s.models, s.shape].any())}
    room.close(sorted(hot))
    order = sorted((k for k, s in enumerate(fleet.servers) if s.models and k not in hot), key=lambda k: (fills[k], k))
    emptied = 0
    for k in order:
        if time.perf_counter() > deadline:
            break
        placed, rest = room.assign(fleet.servers[k].models, exclude=[k])
        if rest:
            continue
        room.dissolve(k)
        room.apply(placed)
        emptied += 1
    return emptied
