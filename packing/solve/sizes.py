"""The whole-node rounding: which instance size each chosen server goes on.

The LP spreads servers over several sizes of a family, and favours the size with the roomiest
pods; rounding each size up to whole nodes on its own can cost a large node for a few pods. So
every chosen server may move to any instance type of its processor where it fits, whole or split
in two pods' worth (`moved`), and one small integer program over the master's node rows
(packing/solve/master.py) rounds them to whole nodes at once (`choose_shapes`).

Before any rounding, `close_part_nodes` takes from the LP the multi-slot shapes of which it opens
part of a node, where the LP without them costs less than rounding their nodes up.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pulp

from packing.model.resources import NodeShape, pod_caps
from packing.solve.columngen import ColumnGeneration
from packing.solve.columns import Pattern
from packing.solve.master import Rows, node_entries, pod_entries


@dataclass(frozen=True)
class ServerGroup:
    """`count` identical servers and, per shape they fit, their (pods, host memory per pod)."""

    count: int
    options: Dict[int, Tuple[int, float]]


def choose_shapes(groups: Sequence[ServerGroup], shapes: Sequence[NodeShape], time_limit: float) -> List[Dict[int, int]]:
    """The master's node rows with the servers given and their shapes to choose:

        minimise    sum_t price_t N_t
        subject to  sum_t w_gt = count_g                          every server placed
                    the node rows of the master for the pods of w_gt on each t
                    w, N integer >= 0

    Returns per group {shape: servers}."""
    rows = Rows(0, len(shapes))
    prob = pulp.LpProblem("shapes", pulp.LpMinimize)
    used = sorted({t for g in groups for t in g.options})
    nodes = {t: pulp.LpVariable(f"nodes_{t}", lowBound=0, cat=pulp.LpInteger) for t in used}
    w = {(k, t): pulp.LpVariable(f"servers_{k}_{t}", lowBound=0, upBound=g.count, cat=pulp.LpInteger)
         for k, g in enumerate(groups) for t in g.options}
    prob += pulp.lpSum(shapes[t].price * nodes[t] for t in used)
    for k, g in enumerate(groups):
        prob += pulp.lpSum(w[k, t] for t in g.options) == g.count, f"place_{k}"
    terms: Dict[int, List] = defaultdict(list)
    for (k, t), v in w.items():
        pods, host = groups[k].options[t]
        for r, a in pod_entries(rows, shapes[t], t, pods, host):
            terms[r].append((v, a))
    for t in used:
        for r, a in node_entries(rows, shapes[t], t):
            if terms[r]:
                prob += pulp.LpAffineExpression(terms[r] + [(nodes[t], a)]) <= 0, rows.name(r)
    prob.solve(pulp.HiGHS(msg=False, timeLimit=max(0.5, time_limit), gapRel=1e-4, threads=1))
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise RuntimeError(f"choosing instance types found no solution ({pulp.LpStatus[prob.status]})")
    out: List[Dict[int, int]] = [dict() for _ in groups]
    for (k, t), v in w.items():
        n = int(round(v.varValue or 0))
        if n:
            out[k][t] = n
    return out


def fits(cg: ColumnGeneration, p: Pattern, t: int) -> Optional[Pattern]:
    """The same server on shape t, if every model may go there and the pod still fits."""
    cls, s = cg.cls, cg.shapes[t]
    if not all(cls.eligible[i, t] for i, _ in p.counts):
        return None
    hot = [i for i, _ in p.counts if cls.hot[i, t]]
    if hot:
        if len(p.counts) != 1:
            return None
        return cg.hot_pattern(hot[0], t)
    if any(cls.hot[i, p.shape] for i, _ in p.counts):
        return None  # a hot model's own server there, a shared one here: not the same server
    caps = pod_caps(s)
    mem = sum(cls.d_hi[i, t] * a for i, a in p.counts)
    load = sum(cls.u_hi[i, t] * a for i, a in p.counts) / cg.R
    host = sum(cls.h_hi[i, t] * a for i, a in p.counts)
    if mem <= caps[0] and load <= caps[1] and host <= caps[2]:
        return Pattern(t, p.counts, cg.R, s.pod_base_mib + host)
    return None


def moved(cg: ColumnGeneration, p: Pattern, t: int) -> List[Pattern]:
    """Server p on shape t: as it is if it fits, else its models split over two servers
    (greedy), else nothing."""
    q = fits(cg, p, t)
    if q is not None:
        return [q]
    pr = cg.pricing[t]
    if any(cg.cls.hot[i, t] or not cg.cls.eligible[i, t] for i, _ in p.counts) or pr.items.size == 0:
        return []
    where = {int(i): k for k, i in enumerate(pr.items)}
    want = np.zeros(pr.items.size, int)
    for i, a in p.counts:
        want[where[i]] = a
    _, first = pr.knapsack("hi").greedy(np.where(want > 0, 1.0, 0.0), ub=want)
    rest = want - first
    if not first.any() or not rest.any():
        return []
    halves = [cg.pattern_from_counts(t, pr.items, first), cg.pattern_from_counts(t, pr.items, rest)]
    return halves if all(fits(cg, h, t) is not None for h in halves) else []


def rehome(cg: ColumnGeneration, chosen: Dict[int, int], time_limit: float) -> Dict[int, int]:
    """`chosen` servers (pattern -> count), each moved to the instance type of its processor
    that the whole-node rounding picks (`choose_shapes`); servers per pattern index."""
    shapes = cg.shapes
    keys = sorted(chosen)
    groups, ways = [], []
    for j in keys:
        p = cg.patterns[j]
        options, how = {}, {}
        for t, s in enumerate(shapes):
            if s.processor != shapes[p.shape].processor:
                continue
            there = [p] if t == p.shape else moved(cg, p, t)
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


def close_part_nodes(cg: ColumnGeneration, deadline: float) -> List[int]:
    """Multi-slot shapes of which the LP opens part of a node: rounded, the rest of that node is
    paid for too, which the LP never sees (0.42 of an inf2.24xlarge for 2.5 pods is $2.73/h in the
    LP, and re-homed, one inf2.xlarge and two inf2.8xlarge, $4.69/h). Each in turn, the largest
    such waste first, is closed to the LP, which re-places its pods over the columns it has (no
    pricing: a knapsack MIP may take seconds, and the columns of column generation's last rounds
    hold the alternatives), and stays closed where the LP then costs less than before plus that
    waste (the rest of its last node at its price). A shape of the same price a slot (inf2.48xlarge
    beside inf2.24xlarge) then takes the pods and is tried next. Until `deadline`; the master is
    left as last read. Returns the shapes closed."""
    value = cg.read_lp(deadline)
    closed: List[int] = []
    tried: set = set()
    while time.perf_counter() < deadline:
        nodes = cg.master.node_values()
        waste = {t: (math.ceil(n - 1e-6) - n) * s.price for t, (s, n) in enumerate(zip(cg.shapes, nodes))
                 if s.slots > 1 and n > 1e-6 and t not in tried}
        worst = max(waste, key=lambda t: (waste[t], -t), default=None)
        if worst is None or waste[worst] < 1e-6:
            break
        tried.add(worst)
        cg.master.allow_nodes(worst, False)
        without = cg.read_lp(deadline)
        if not cg.master.optimal:  # stopped at the deadline: its value proves nothing
            cg.master.allow_nodes(worst, True)
            cg.read_lp()
            break
        if without < value + waste[worst] - 1e-9:
            closed.append(worst)
            value = without
        else:
            cg.master.allow_nodes(worst, True)
            value = cg.read_lp(deadline)
    return closed
