"""The integer programs, written as PuLP models so they read like the maths.

`integer_master` picks whole numbers of server patterns and nodes from the generated columns:

    minimise    sum_t price_t N_t
    subject to  sum_j a_ij x_j              >= n_i           (every model of class i placed)
                sum_{j on t} r_j x_j        <= slots_t N_t   (one pod per device or slice)
                sum_{j on t} r_j host_j x_j <= host_t N_t    (the nodes' allocatable memory)
                x_j, N_t integer >= 0
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Sequence

import pulp

from packing.colgen import Pattern
from packing.resources import NodeShape


@dataclass
class IntegerSolution:
    servers: Dict[int, int]  # pattern index -> number of servers
    nodes: Dict[int, int]  # shape index -> nodes
    cost: float
    optimal: bool
    status: str


def integer_master(
    patterns: Sequence[Pattern],
    counts: Sequence[int],
    shapes: Sequence[NodeShape],
    time_limit: float,
    gap: float = 1e-4,
) -> IntegerSolution:
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

    solver = pulp.HiGHS(msg=False, timeLimit=max(1.0, time_limit), gapRel=gap, threads=1)
    prob.solve(solver)
    status = pulp.LpStatus[prob.status]
    if status != "Optimal" and not all(v.varValue is not None for v in servers.values()):
        raise RuntimeError(f"the integer master found no solution ({status}) within {time_limit:.1f} s")
    chosen = {j: int(round(v.varValue or 0)) for j, v in servers.items() if (v.varValue or 0) > 0.5}
    n_nodes = {t: int(round(v.varValue or 0)) for t, v in nodes.items() if (v.varValue or 0) > 0.5}
    cost = sum(shapes[t].price * n for t, n in n_nodes.items())
    return IntegerSolution(chosen, n_nodes, cost, status == "Optimal", status)
