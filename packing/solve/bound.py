"""Lower bounds: every plan of these models costs at least this much, wherever the solver stopped.

- The fluid relaxation (`fluid_relaxation`): models may be split across pods, pods across nodes,
  with dual-feasible-function rows putting back part of what splitting hides.
- The same with a whole number of nodes of each instance type (`whole_node_bound`), a MIP whose
  proven dual bound counts.
- Farley's bound on the configuration LP (`FarleyBound`), valid at any duals.

All use the classes' `lo` values (each class's smallest members), so they hold for the real
models however coarse the classes.

Farley. For any duals pi >= 0 and rho >= 0, one node of shape t can earn at most
    V_t = slots_t x max(0, max_j (pi.a_j - r_j rho_t host_j) / r_j) + host_t x rho_t
(LP duality on the node's own slot and host rows; the big-pod rows are left out, which only
relaxes), so theta = min_t price_t / V_t makes theta x pi dual feasible and theta x sum_i n_i pi_i
is a lower bound on every plan. theta is not capped at 1: when no node earns its price at these
duals, scaling them up is still dual feasible. Tiers of one instance type share nodes, so V is
taken per instance type, over the best pod of any of its tiers. What a pod earns comes from the
`lo` knapsack's proven upper bound (packing/solve/knapsack.py), never from a heuristic answer.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pulp

from packing.model.classes import Classes
from packing.model.resources import NodeShape, node_groups
from packing.solve.pricing import Pricing

EPS = 1e-7


class FarleyBound:
    """`bound(pi, rho)`: Farley's bound at duals pi (per class) and rho (per shape). Classes hot
    everywhere are out of the LP; they are priced at what their own servers cost (`own_price`)."""

    def __init__(self, pricing: Pricing, cls: Classes, shapes: Sequence[NodeShape], min_replicas: int,
                 own_price: np.ndarray, pure_hot: np.ndarray):
        self.pricing, self.cls, self.shapes, self.R = pricing, cls, list(shapes), min_replicas
        self.own_price, self.pure_hot = own_price, pure_hot
        self.tiers: Dict[int, List[int]] = {}
        for t, g in enumerate(node_groups(self.shapes)):
            self.tiers.setdefault(g, []).append(t)

    def slot_value(self, t: int, pi: np.ndarray, rho: float, cache: Dict[tuple, float]) -> float:
        """What one pod of shape t can earn at duals pi, host memory priced at rho, proven (lo
        values, knapsack bound)."""
        s, cls = self.shapes[t], self.cls
        per_slot = 0.0
        pr = self.pricing[t]
        if pr.items.size:
            knap = pr.knapsack("lo")
            key = (id(knap), rho * pr.r, s.pod_base_mib)
            if key not in cache:
                values, const = pr.values(pi, rho, "lo")
                cache[key] = (knap.upper_bound(values) - const) / self.R
            per_slot = max(per_slot, cache[key])
        for i in np.flatnonzero(cls.eligible[:, t] & cls.hot[:, t]):
            r = int(cls.replicas[i, t])
            per_slot = max(per_slot, (pi[i] - r * rho * (s.pod_base_mib + cls.h_lo[i, t])) / r)
        return per_slot

    def __call__(self, pi: np.ndarray, rho: np.ndarray) -> float:
        """theta x sum_i n_i pi_i with theta = min_g price_g / V_g: theta pi is dual feasible, so
        this is a lower bound for *any* pi, rho >= 0. A node of instance type g may hold pods of
        any of its SLO tiers, so V_g takes the best pod over all of them, with one host-memory
        price for the node (the least of its tiers')."""
        theta = float("inf")
        cache: Dict[tuple, float] = {}
        pi = np.where(self.pure_hot, self.own_price, pi)
        for g, members in self.tiers.items():
            s = self.shapes[g]
            rho_g = float(min(rho[t] for t in members))
            v = s.slots * max(self.slot_value(t, pi, rho_g, cache) for t in members) + s.host_alloc_mib * rho_g
            if v > EPS:
                theta = min(theta, s.price / v)
        if not np.isfinite(theta):
            return 0.0
        return max(0.0, theta * float(np.dot(self.cls.count, pi)))


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
