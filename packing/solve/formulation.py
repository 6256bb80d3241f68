"""The integer programs, written as PuLP models so they read like the maths.

`integer_master` picks whole numbers of server patterns and nodes from the generated columns:

    minimise    sum_t price_t N_t
    subject to  sum_j a_ij x_j              >= n_i           (every model of class i placed)
                sum_{j on t} r_j x_j        <= slots_t N_t   (one pod per device or slice)
                sum_{j on t} r_j host_j x_j <= host_t N_t    (the nodes' allocatable memory)
                x_j, N_t integer >= 0
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pulp

from packing.model.classes import Classes
from packing.model.resources import NodeShape, node_groups, nodes_price
from packing.solve.colgen import BIG_POD_SPLITS, Pattern


@dataclass
class IntegerSolution:
    servers: Dict[int, int]  # pattern index -> number of servers
    nodes: Dict[int, int]  # shape index -> nodes
    cost: float
    optimal: bool
    status: str


class _StartedHiGHS(pulp.HiGHS):
    """HiGHS through highspy with a starting solution: PuLP's highspy interface has no warm
    start of its own, so the values are handed to HiGHS after the model is built."""

    def __init__(self, start: Dict[str, float], **kwargs):
        super().__init__(**kwargs)
        self.start = start

    def callSolver(self, lp):
        index = {v.name: v.index for v in lp.variables()}
        named = [(index[k], float(x)) for k, x in self.start.items() if k in index]
        if named:
            cols, vals = zip(*named)
            lp.solverModel.setSolution(len(cols), np.array(cols, np.int32), np.array(vals, float))
        super().callSolver(lp)


def integer_master(
    patterns: Sequence[Pattern],
    counts: Sequence[int],
    shapes: Sequence[NodeShape],
    time_limit: float,
    gap: float = 1e-4,
    start: Optional[Dict[int, int]] = None,
) -> IntegerSolution:
    """`start`: servers per pattern of a plan already found, HiGHS's first incumbent (with the
    fewest nodes each shape's rows allow), so a time-limited solve ends no dearer than that."""
    prob = pulp.LpProblem("fleet", pulp.LpMinimize)
    used_shapes = sorted({p.shape for p in patterns})
    nodes = {t: pulp.LpVariable(f"nodes_{t}", lowBound=0, cat=pulp.LpInteger) for t in used_shapes}
    servers = {j: pulp.LpVariable(f"servers_{j}", lowBound=0, cat=pulp.LpInteger) for j in range(len(patterns))}
    prob += pulp.lpSum(shapes[t].price * nodes[t] for t in used_shapes), "cost_per_hour"

    cover: Dict[int, List] = defaultdict(list)
    pods: Dict[int, List] = defaultdict(list)
    host: Dict[int, List] = defaultdict(list)
    for j, p in enumerate(patterns):
        for i, a in p.counts:
            cover[i].append((servers[j], a))
        pods[p.shape].append((servers[j], p.replicas))
        host[p.shape].append((servers[j], p.replicas * p.host_per_pod))
    for i, n in enumerate(counts):
        prob += pulp.LpAffineExpression(cover[i]) >= int(n), f"place_class_{i}"
    for t in used_shapes:
        prob += pulp.LpAffineExpression(pods[t]) <= shapes[t].slots * nodes[t], f"slots_{t}"
        prob += pulp.LpAffineExpression(host[t]) <= shapes[t].host_alloc_mib * nodes[t], f"host_memory_{t}"
        for q in BIG_POD_SPLITS:
            big = [(servers[j], p.replicas) for j, p in enumerate(patterns)
                   if p.shape == t and p.host_per_pod > shapes[t].host_alloc_mib / q * (1 + 1e-9)]
            if big:
                prob += pulp.LpAffineExpression(big) <= (q - 1) * nodes[t], f"big_pods_{q}_{t}"

    settings = dict(msg=False, timeLimit=max(1.0, time_limit), gapRel=gap, threads=1)
    if start is None:
        solver = pulp.HiGHS(**settings)
    else:
        # Every variable gets a value: the patterns the start leaves out are 0 in it.
        first = {v.name: float(start.get(j, 0)) for j, v in servers.items()}
        first.update({nodes[t].name: float(n) for t, n in fewest_nodes(patterns, start, shapes).items()})
        solver = _StartedHiGHS(first, **settings)
    prob.solve(solver)
    # PuLP reports a time-limited incumbent as "Optimal"; its solution status tells them apart.
    found = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if not found or any(v.varValue is None for v in servers.values()):
        raise RuntimeError(f"the integer master found no solution ({pulp.LpStatus[prob.status]}) within {time_limit:.1f} s")
    status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "time limit (best found)"
    chosen = {j: int(round(v.varValue or 0)) for j, v in servers.items() if (v.varValue or 0) > 0.5}
    n_nodes = {t: int(round(v.varValue or 0)) for t, v in nodes.items() if (v.varValue or 0) > 0.5}
    cost = nodes_price(n_nodes, shapes)
    return IntegerSolution(chosen, n_nodes, cost, status == "optimal", status)


def fewest_nodes(patterns: Sequence[Pattern], servers: Dict[int, int], shapes: Sequence[NodeShape]) -> Dict[int, int]:
    """Per shape, the fewest nodes the integer master's slot, host and big-pod rows allow for
    `servers` (pattern -> count): each shape of its used patterns gets a value, 0 included."""
    need: Dict[int, int] = {t: 0 for t in {p.shape for p in patterns}}
    pods: Dict[int, float] = defaultdict(float)
    host: Dict[int, float] = defaultdict(float)
    big: Dict[Tuple[int, int], float] = defaultdict(float)
    for j, n in servers.items():
        p = patterns[j]
        pods[p.shape] += n * p.replicas
        host[p.shape] += n * p.replicas * p.host_per_pod
        for q in BIG_POD_SPLITS:
            if p.host_per_pod > shapes[p.shape].host_alloc_mib / q * (1 + 1e-9):
                big[p.shape, q] += n * p.replicas
    for t in need:
        s = shapes[t]
        # A hair under each ratio's ceiling, so float noise on a full node does not add one.
        ratios = [pods[t] / s.slots, host[t] / s.host_alloc_mib] + [big[t, q] / (q - 1) for q in BIG_POD_SPLITS]
        need[t] = max(int(math.ceil(r - 1e-9)) for r in ratios)
    return need


@dataclass
class NodeSolution:
    pods: List[Tuple[int, int, int]]  # (pattern, shape, node number within the shape), one per pod
    servers: Dict[int, int]  # pattern -> servers
    cost: float
    optimal: bool


def integer_nodes(
    patterns: Sequence[Pattern],
    counts: Sequence[int],
    shapes: Sequence[NodeShape],
    max_nodes: Dict[int, int],
    time_limit: float,
) -> NodeSolution:
    """The exact integer program with every node explicit (small problems only): the integer
    master counts node capacity in aggregate, which can promise a packing no single node holds.

        minimise    sum_{t,k} price_t open_tk
        subject to  sum_j a_ij s_j >= n_i                              every model placed
                    sum_k w_jtk = r_j s_j                              a server's pods
                    sum_j r.. w_jtk <= slots_t open_tk                 one pod per device
                    sum_j host_j w_jtk <= host_t open_tk               node memory
                    open_tk >= open_t,k+1                              (symmetry)
    with w_jtk the pods of pattern j on node k of shape t.
    """
    prob = pulp.LpProblem("nodes", pulp.LpMinimize)
    nodes = {(t, k): pulp.LpVariable(f"open_{t}_{k}", cat=pulp.LpBinary) for t, m in max_nodes.items() for k in range(m)}
    servers = {j: pulp.LpVariable(f"servers_{j}", lowBound=0, cat=pulp.LpInteger) for j in range(len(patterns))}
    pods = {(j, k): pulp.LpVariable(f"pods_{j}_{k}", lowBound=0, cat=pulp.LpInteger)
            for j, p in enumerate(patterns) for k in range(max_nodes.get(p.shape, 0))}
    prob += pulp.lpSum(shapes[t].price * v for (t, _), v in nodes.items())
    cover: Dict[int, List] = defaultdict(list)
    for j, p in enumerate(patterns):
        for i, a in p.counts:
            cover[i].append((servers[j], a))
        prob += pulp.lpSum(pods[j, k] for k in range(max_nodes.get(p.shape, 0))) == p.replicas * servers[j], f"pods_of_{j}"
    for i, n in enumerate(counts):
        prob += pulp.LpAffineExpression(cover[i]) >= int(n), f"place_class_{i}"
    for (t, k), open_ in nodes.items():
        mine = [j for j, p in enumerate(patterns) if p.shape == t]
        prob += pulp.lpSum(pods[j, k] for j in mine) <= shapes[t].slots * open_, f"slots_{t}_{k}"
        prob += pulp.lpSum(patterns[j].host_per_pod * pods[j, k] for j in mine) <= shapes[t].host_alloc_mib * open_, f"host_{t}_{k}"
        if k + 1 < max_nodes[t]:
            prob += open_ >= nodes[t, k + 1], f"order_{t}_{k}"
    prob.solve(pulp.HiGHS(msg=False, timeLimit=max(1.0, time_limit), gapRel=1e-6, threads=1))
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise RuntimeError(f"the node-level integer program found no solution ({pulp.LpStatus[prob.status]})")
    out = []
    for (j, k), v in pods.items():
        out.extend([(j, patterns[j].shape, k)] * int(round(v.varValue or 0)))
    chosen = {j: int(round(v.varValue or 0)) for j, v in servers.items() if (v.varValue or 0) > 0.5}
    cost = sum(shapes[t].price for (t, _), v in nodes.items() if (v.varValue or 0) > 0.5)
    return NodeSolution(out, chosen, cost, prob.sol_status == pulp.LpSolutionOptimal)


@dataclass(frozen=True)
class ServerGroup:
    """`count` identical servers and, per shape they fit, their (pods, host memory per pod)."""

    count: int
    options: Dict[int, Tuple[int, float]]


def choose_shapes(groups: Sequence[ServerGroup], shapes: Sequence[NodeShape], time_limit: float) -> List[Dict[int, int]]:
    """Which instance type each server goes on, given the servers: the whole-node rounding.

        minimise    sum_t price_t N_t
        subject to  sum_t w_gt = count_g                          every server placed
                    sum_g pods_gt w_gt <= slots_t N_t             one pod per device
                    sum_g pods_gt host_gt w_gt <= host_t N_t      node memory
                    w, N integer >= 0

    The LP spreads servers over several sizes of a family; rounding each size up to whole nodes
    on its own can cost a large node for a few pods. Returns per group {shape: servers}.
    """
    prob = pulp.LpProblem("shapes", pulp.LpMinimize)
    used = sorted({t for g in groups for t in g.options})
    nodes = {t: pulp.LpVariable(f"nodes_{t}", lowBound=0, cat=pulp.LpInteger) for t in used}
    w = {(k, t): pulp.LpVariable(f"servers_{k}_{t}", lowBound=0, upBound=g.count, cat=pulp.LpInteger)
         for k, g in enumerate(groups) for t in g.options}
    prob += pulp.lpSum(shapes[t].price * nodes[t] for t in used)
    for k, g in enumerate(groups):
        prob += pulp.lpSum(w[k, t] for t in g.options) == g.count, f"place_{k}"
    for t in used:
        mine = [(k, g.options[t]) for k, g in enumerate(groups) if t in g.options]
        prob += pulp.lpSum(pods * w[k, t] for k, (pods, _) in mine) <= shapes[t].slots * nodes[t], f"slots_{t}"
        prob += pulp.lpSum(pods * host * w[k, t] for k, (pods, host) in mine) <= shapes[t].host_alloc_mib * nodes[t], f"host_{t}"
        for q in BIG_POD_SPLITS:
            big = [(k, pods) for k, (pods, host) in mine if host > shapes[t].host_alloc_mib / q * (1 + 1e-9)]
            if big:
                prob += pulp.lpSum(pods * w[k, t] for k, pods in big) <= (q - 1) * nodes[t], f"big_pods_{q}_{t}"
    prob.solve(pulp.HiGHS(msg=False, timeLimit=max(0.5, time_limit), gapRel=1e-4, threads=1))
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise RuntimeError(f"choosing instance types found no solution ({pulp.LpStatus[prob.status]})")
    out: List[Dict[int, int]] = [dict() for _ in groups]
    for (k, t), v in w.items():
        n = int(round(v.varValue or 0))
        if n:
            out[k][t] = n
    return out


def fekete_schepers(x: np.ndarray, k: int) -> np.ndarray:
    """The dual feasible function u_k of Fekete and Schepers: x where (k+1)x is whole, else
    floor((k+1)x) / k. Sums of u_k over items that fit one bin stay within 1. Rounded down at
    float noise, which can only weaken (never invalidate) the rows built from it."""
    y = (k + 1) * np.asarray(x, float)
    whole = np.abs(y - np.round(y)) <= 1e-9
    return np.where(whole, x, np.maximum(0.0, np.floor(y - 1e-9) / k))


def _dff_orders(items: Sequence[Tuple[float, int]], most: int = 12) -> List[int]:
    """The orders k worth a row: 1/size rounded down for the sizes that matter most."""
    weight: Dict[int, float] = defaultdict(float)
    for x, n in items:
        if 0 < x <= 1:
            k = int(np.floor(1 / x + 1e-12))
            if k >= 1:
                weight[k] += n * x
    return sorted(sorted(weight, key=lambda k: -weight[k])[:most])


@dataclass
class FluidSolution:
    value: float
    pi: np.ndarray  # per class: the marginal cost of one more model
    rho: np.ndarray  # per shape: the price of one MiB of node host memory


def fluid_relaxation(cls: Classes, shapes: Sequence[NodeShape], min_replicas: int) -> FluidSolution:
    """The fluid LP (`_fluid_model`) solved, with its duals."""
    prob, group = _fluid_model(cls, shapes, min_replicas, pulp.LpContinuous)
    prob.solve(pulp.HiGHS(msg=False, threads=1))
    if prob.status != pulp.LpStatusOptimal:
        raise RuntimeError(f"the fluid relaxation did not solve: {pulp.LpStatus[prob.status]}")
    pi = np.array([max(0.0, prob.constraints[f"place_{i}"].pi or 0.0) for i in range(len(cls))])
    rho = np.array([max(0.0, -(prob.constraints[f"host_{group[t]}"].pi or 0.0)) for t in range(len(shapes))])
    return FluidSolution(float(pulp.value(prob.objective)), pi, rho)


def whole_node_bound(cls: Classes, shapes: Sequence[NodeShape], min_replicas: int, time_limit: float) -> float:
    """The fluid relaxation with a whole number of nodes of each instance type: still a
    relaxation of every plan (whose nodes are whole), and above the fluid LP wherever its
    fractional nodes mattered (on the mixed 3,040 catalogue, about 1.3% of the bound: a few
    dear nodes of which the LP bought a share). A MIP, so HiGHS's proven dual bound is what
    counts: valid wherever it stops; 0 if it stopped before bounding anything."""
    prob, _ = _fluid_model(cls, shapes, min_replicas, pulp.LpInteger)
    prob.solve(pulp.HiGHS(msg=False, threads=1, timeLimit=max(0.1, time_limit)))
    bound = float(prob.solverModel.getInfo().mip_dual_bound)
    return bound if math.isfinite(bound) else 0.0


def _fluid_model(cls: Classes, shapes: Sequence[NodeShape], min_replicas: int,
                 node_kind: str) -> Tuple[pulp.LpProblem, List[int]]:
    """The fluid LP: models may be split across pods, pods across nodes. It relaxes the real
    problem (with the classes' `lo` values), so its value is a lower bound, and its duals are a
    good start for the Farley bound, which puts back that a model cannot be split.

        minimise    sum_t price_t N_t
        subject to  sum_t y_it + sum_t z_it >= n_i                       (pi_i)
                    sum_i d_it y_it <= cap_t P_t                         pod memory
                    sum_i u_it / R y_it <= U P_t                         pod utilisation
                    R P_t + sum_i r_it z_it <= slots_t N_t               one pod per device
                    sum_i R h_it y_it + R base P_t
                      + sum_i r_it (base + h_it) z_it <= host_t N_t      (rho_t) node memory
    where y are models in shared pods, z hot models' own servers (r_it replicas each). The SLO
    tiers of one instance type share its nodes: N, the slot row and the host row are per type
    (the sums run over its tiers), so the bound holds for plans that mix tiers on a node.
    """
    R = min_replicas
    prob = pulp.LpProblem("fluid", pulp.LpMinimize)
    n_cls, n_shapes = len(cls), len(shapes)
    group = node_groups(shapes)
    types = sorted(set(group))
    node_of = {g: pulp.LpVariable(f"nodes_{g}", lowBound=0, cat=node_kind) for g in types}
    pods = [pulp.LpVariable(f"servers_{t}", lowBound=0) for t in range(n_shapes)]
    y: Dict[tuple, pulp.LpVariable] = {}
    z: Dict[tuple, pulp.LpVariable] = {}
    for i in range(n_cls):
        for t in np.flatnonzero(cls.eligible[i]):
            if cls.hot[i, t]:
                z[i, t] = pulp.LpVariable(f"own_{i}_{t}", lowBound=0)
            else:
                y[i, t] = pulp.LpVariable(f"shared_{i}_{t}", lowBound=0)
    prob += pulp.lpSum(shapes[g].price * node_of[g] for g in types)
    by_class: Dict[int, List] = defaultdict(list)
    by_shape: Dict[int, List] = defaultdict(list)
    for (i, t), v in list(y.items()) + list(z.items()):
        by_class[i].append(v)
        by_shape[int(t)].append((i, v, (i, t) in z))
    cover = {}
    for i in range(n_cls):
        cover[i] = pulp.lpSum(by_class[i]) >= int(cls.count[i])
        prob += cover[i], f"place_{i}"
    slot_use: Dict[int, List] = defaultdict(list)
    host_use: Dict[int, List] = defaultdict(list)
    for t, s in enumerate(shapes):
        shared = [(i, v) for i, v, own in by_shape[t] if not own]
        own = [(i, v) for i, v, own in by_shape[t] if own]
        prob += pulp.lpSum(cls.d_lo[i, t] * v for i, v in shared) <= s.device_memory_cap_mib * pods[t], f"memory_{t}"
        prob += pulp.lpSum(cls.u_lo[i, t] / R * v for i, v in shared) <= s.utilisation_cap * pods[t], f"load_{t}"
        # Models cannot be split across pods: dual feasible functions turn that into valid rows
        # (sum_i u_k(d_i / cap) <= 1 holds in every pod whose memory fits).
        # The same for a pod's utilisation and for the host memory its node can give it.
        tol = 1 + 1e-9
        for dim, (figure, cap) in enumerate(((cls.d_lo, s.device_memory_cap_mib), (cls.u_lo / R, s.utilisation_cap),
                                              (cls.h_lo, s.host_alloc_mib - s.pod_base_mib))):
            if cap <= 0:
                continue
            if not shared:
                continue
            sizes = np.array([figure[i, t] for i, _ in shared]) / (cap * tol)
            for k in _dff_orders(list(zip(sizes.tolist(), (int(cls.count[i]) for i, _ in shared), strict=True))):
                coeffs = fekete_schepers(sizes, k)
                terms = [(v, float(c)) for (_, v), c in zip(shared, coeffs, strict=True) if c > 0]
                if terms:
                    prob += pulp.LpAffineExpression(terms) <= pods[t], f"whole_models_{t}_{dim}_{k}"
        slot_use[group[t]].append(R * pods[t] + pulp.lpSum(int(cls.replicas[i, t]) * v for i, v in own))
        host_use[group[t]].append(pulp.lpSum(R * cls.h_lo[i, t] * v for i, v in shared) + R * s.pod_base_mib * pods[t]
                                  + pulp.lpSum(int(cls.replicas[i, t]) * (s.pod_base_mib + cls.h_lo[i, t]) * v for i, v in own))
    for g in types:
        prob += pulp.lpSum(slot_use[g]) <= shapes[g].slots * node_of[g], f"slots_{g}"
        prob += pulp.lpSum(host_use[g]) <= shapes[g].host_alloc_mib * node_of[g], f"host_{g}"
    return prob, group
