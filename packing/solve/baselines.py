"""Baselines the planner is measured against. Pure functions of a `Demand`: no I/O.

- `first_fit_decreasing_by_price`: how Karpenter-style packers do it. Models in decreasing order of
  their largest normalised need (memory / pod memory cap, load / utilisation cap, on their
  cheapest eligible shape); each goes into the first open pod (opening order, over every shape
  where it is eligible and not hot) whose model memory, utilisation and host memory still fit;
  when none fits, a new pod on a node that still has a free slot, else a new node of the shape
  with the lowest price per pod slot among those where the model is eligible. One pod per device,
  as in the planner; with `min_replicas` R a "pod" is a server of R pods on R distinct nodes
  whose per-pod utilisation is its load / R. A model hot on a shape (`Demand.hot`) gets
  `replicas` pods of its own there when they cost less, by price per slot, than its share (its
  largest normalised need) of a pod on the cheapest shape where it is not hot; always where it
  is hot everywhere it may go.
- `reference_fixed_packing`: the reference design's fixed packing, `per_device` models per chip
  on inf1.6xlarge: ceil(models / (per_device x chips)) nodes.

The capacity rules are the planner's own (`packing.model.resources.pod_caps`): model
memory per pod, utilisation per pod, host memory per pod (server base + the models' host memory)
and per node, all with a relative tolerance of 1e-9.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from packing.model.demand import Demand
from packing.model.resources import NodeShape, PackingOptions, node_host_cap, nodes_price, pod_caps, pod_fits

NEG = -math.inf


@dataclass
class BaselineServer:
    shape: int  # index into the shapes
    replicas: int
    models: List[int]  # model indices into the Demand
    nodes: List[int]  # per replica: node index among the nodes of its shape


@dataclass
class BaselineResult:
    name: str
    instances: Dict[str, int]  # {instance type: nodes}
    cost_per_hour: float  # instances + platform, the plans' basis
    seconds: float
    pods: int = 0
    servers: List[BaselineServer] = field(default_factory=list)


class _FirstFit:
    """Items with three free capacities, in the order they were opened; `first` finds the first
    item (from `lo` on) where all three are at least the need. Columns are numpy arrays, so a
    search is one vectorised pass: exact first fit, fast enough for 100,000 models."""

    def __init__(self) -> None:
        self.n = 0
        self.cols = [np.full(64, NEG) for _ in range(3)]

    def append(self, a: float, b: float, c: float) -> int:
        if self.n == len(self.cols[0]):
            self.cols = [np.concatenate([col, np.full(len(col), NEG)]) for col in self.cols]
        self.n += 1
        self.set(self.n - 1, a, b, c)
        return self.n - 1

    def set(self, i: int, a: float, b: float, c: float) -> None:
        c0, c1, c2 = self.cols
        c0[i], c1[i], c2[i] = a, b, c

    def first(self, a: float, b: float, c: float, lo: int = 0) -> int:
        """Index of the first item >= lo with free capacities >= (a, b, c), or -1."""
        if lo >= self.n:
            return -1
        c0, c1, c2 = (col[lo:self.n] for col in self.cols)
        fits = c0 >= a
        fits &= c1 >= b
        fits &= c2 >= c
        k = int(fits.argmax())
        return lo + k if fits[k] else -1


class _Shape:
    """Open nodes and pods (servers) of one shape, with tolerant capacities."""

    def __init__(self, s: NodeShape) -> None:
        self.mem_cap, self.util_cap, self.room_cap = pod_caps(s)  # room: models' host memory in one pod
        self.host_cap = node_host_cap(s)
        self.base = s.pod_base_mib
        self.slots = s.slots
        # nodes: free slots, free host memory, servers with a pod there
        self.node_table = _FirstFit()
        self.node_slots: List[int] = []
        self.node_host: List[float] = []
        self.node_servers: List[List[int]] = []
        # servers open to more models (hot ones are not in the table): free memory, load, host room
        self.pod_table = _FirstFit()
        self.mem_free: List[float] = []
        self.util_free: List[float] = []
        self.room_free: List[float] = []
        self.server_of: List[int] = []  # table index -> global server index

    def new_node(self) -> int:
        self.node_slots.append(self.slots)
        self.node_host.append(self.host_cap)
        self.node_servers.append([])
        return self.node_table.append(float(self.slots), self.host_cap, 0.0)

    def free_node(self, host_need: float, lo: int) -> int:
        return self.node_table.first(1.0, host_need, 0.0, lo)


def _price_order(shapes: Sequence[NodeShape]) -> List[int]:
    """Shapes by price per pod slot, then price (the smaller node), then catalogue order."""
    return sorted(range(len(shapes)), key=lambda t: (shapes[t].price / shapes[t].slots, shapes[t].price, t))


def _instances(shapes: Sequence[NodeShape], nodes: Dict[int, int]) -> Dict[str, int]:
    """Nodes per instance type (the SLO tiers of a type each count their own)."""
    out: Dict[str, int] = {}
    for t, n in nodes.items():
        out[shapes[t].name] = out.get(shapes[t].name, 0) + n
    return {name: n for name, n in sorted(out.items()) if n > 0}


def first_fit_decreasing_by_price(demand: Demand, shapes: Sequence[NodeShape], opts: PackingOptions,
                                  platform: float) -> BaselineResult:
    start = time.perf_counter()
    n, k = demand.d.shape
    if k != len(shapes):
        raise ValueError(f"the demand has {k} shapes, {len(shapes)} given")
    reps_min = opts.min_replicas
    order_t = _price_order(shapes)
    rank = np.empty(k, int)
    rank[order_t] = np.arange(k)
    per_slot = np.array([s.price / s.slots for s in shapes])
    mem_cap = np.array([s.device_memory_cap_mib for s in shapes])
    util_cap = np.array([s.utilisation_cap for s in shapes])

    # Size on the cheapest eligible shape; largest first, ties in catalogue order.
    cheapest = np.where(demand.eligible, rank[None, :], k).argmin(axis=1)
    rows = np.arange(n)
    size = np.maximum(demand.d[rows, cheapest] / mem_cap[cheapest],
                      demand.u[rows, cheapest] / reps_min / util_cap[cheapest])
    order = np.lexsort((rows, -size)).tolist()

    d, h, u, eligible, hot, replicas = demand.d, demand.h, demand.u, demand.eligible, demand.hot, demand.replicas
    state: Dict[int, _Shape] = {}
    servers: List[BaselineServer] = []
    table_index: List[int] = []  # global server -> index in its shape's pod table (-1: closed)

    def shape_state(t: int) -> _Shape:
        if t not in state:
            state[t] = _Shape(shapes[t])
        return state[t]

    def refresh(st: _Shape, g: int) -> None:
        """Recompute an open server's free host memory (its own room, and each of its nodes')."""
        i = table_index[g]
        if i < 0:
            return
        host = min(st.node_host[j] for j in servers[g].nodes)
        room = st.room_free[i]
        st.pod_table.set(i, st.mem_free[i], st.util_free[i], room if room < host else host)

    def take_host(st: _Shape, j: int, mib: float, slots: int = 0) -> None:
        st.node_host[j] -= mib
        st.node_slots[j] -= slots
        st.node_table.set(j, float(st.node_slots[j]), st.node_host[j], 0.0)
        for g in st.node_servers[j]:
            refresh(st, g)

    def open_pods(st: _Shape, g: int, count: int, distinct: int, host_need: float) -> None:
        """Put `count` pods of server g on nodes of the shape: the first `distinct` on distinct
        nodes, the rest apart where a node allows; new nodes when no open one has room."""
        prev = -1
        for rep in range(count):
            j = st.free_node(host_need, prev + 1)
            if j < 0 and rep >= distinct:
                j = st.free_node(host_need, 0)
            if j < 0:
                j = st.new_node()
            prev = max(prev, j)
            servers[g].nodes.append(j)
            st.node_servers[j].append(g)
            take_host(st, j, host_need, slots=1)

    for m in order:
        el, ho, dm, hm, um = eligible[m].tolist(), hot[m].tolist(), d[m].tolist(), h[m].tolist(), u[m].tolist()
        cool = [t for t in order_t if el[t] and not ho[t]]
        own = min((t for t in order_t if el[t] and ho[t]), key=lambda t: (replicas[m, t] * per_slot[t], rank[t]), default=-1)
        # Where it costs least by price per slot: `replicas` pods of its own on a shape where it is
        # hot, or its share of a pod on the cheapest shape where it is not.
        if own >= 0 and (not cool or replicas[m, own] * per_slot[own]
                         < per_slot[cool[0]] * max(dm[cool[0]] / mem_cap[cool[0]], um[cool[0]] / reps_min / util_cap[cool[0]])):
            t = own
            st = shape_state(t)
            g = len(servers)
            servers.append(BaselineServer(t, int(replicas[m, t]), [m], []))
            table_index.append(-1)
            open_pods(st, g, int(replicas[m, t]), reps_min, st.base + hm[t])
            continue
        # First fit over every open server of a shape where the model may go, in opening order.
        best_g, best_t, best_i = -1, -1, -1
        for t in cool:
            st = state.get(t)
            if st is None or st.pod_table.n == 0:
                continue
            i = st.pod_table.first(dm[t], um[t] / reps_min, hm[t])
            if i >= 0 and (best_g < 0 or st.server_of[i] < best_g):
                best_g, best_t, best_i = st.server_of[i], t, i
        if best_g >= 0:
            st, t, i = state[best_t], best_t, best_i
            st.mem_free[i] -= dm[t]
            st.util_free[i] -= um[t] / reps_min
            st.room_free[i] -= hm[t]
            servers[best_g].models.append(m)
            for j in servers[best_g].nodes:
                take_host(st, j, hm[t])
            continue
        # A new server: on a node with a free slot if one has room, else on new nodes of the
        # cheapest shape per pod slot.
        t = next((t for t in cool if t in state and state[t].free_node(state[t].base + hm[t], 0) >= 0), cool[0])
        st = shape_state(t)
        g = len(servers)
        servers.append(BaselineServer(t, reps_min, [m], []))
        i = len(st.server_of)
        st.server_of.append(g)
        st.mem_free.append(st.mem_cap - dm[t])
        st.util_free.append(st.util_cap - um[t] / reps_min)
        st.room_free.append(st.room_cap - hm[t])
        table_index.append(st.pod_table.append(st.mem_free[i], st.util_free[i], st.room_free[i]))
        open_pods(st, g, reps_min, reps_min, st.base + hm[t])
        refresh(st, g)

    nodes = {t: len(st.node_slots) for t, st in state.items()}
    cost = nodes_price(nodes, shapes) + platform
    return BaselineResult("ffd-by-price", _instances(shapes, nodes), round(cost, 6), time.perf_counter() - start,
                          pods=sum(s.replicas for s in servers), servers=servers)


def reference_fixed_packing(demand: Demand, shapes: Sequence[NodeShape], opts: PackingOptions, platform: float,
                            per_device: int = 19, instance: str = "inf1.6xlarge") -> Optional[BaselineResult]:
    """`per_device` models per chip on `instance`, one pod per chip: the reference design. None
    when the instance type is not among the shapes or some model does not fit `per_device` to a
    chip (no profile for it, too big, too busy, or hot)."""
    start = time.perf_counter()
    t = next((j for j, s in enumerate(shapes) if s.name == instance), None)
    n = len(demand.model_ids)
    if t is None or n == 0 or not bool(demand.eligible[:, t].all()) or bool(demand.hot[:, t].any()):
        return None
    s = shapes[t]
    fits = (pod_fits(s, per_device * float(demand.d[:, t].max()), per_device * float(demand.u[:, t].max()),
                     per_device * float(demand.h[:, t].max()))
            and s.slots * (s.pod_base_mib + per_device * float(demand.h[:, t].max())) <= node_host_cap(s))
    if not fits:
        return None
    count = math.ceil(n / (per_device * s.slots))
    pods = math.ceil(n / per_device)
    return BaselineResult(f"reference-{per_device}-per-chip", {s.name: count}, round(count * s.price + platform, 6),
                          time.perf_counter() - start, pods=pods)
