"""An exact, independent solver for tiny packing instances (at most 6 models, 3 node shapes).

It knows nothing of the planner's solver (no classes, columns or integer programs): it
enumerates every way to split the models into nodes, and for each node every way to split its
models into pods, and keeps the cheapest. The problem (min_replicas 1, no hot models):

  pod on shape t (one device; cpu: one slice), models M:
      sum_M d  <= device_memory_cap_mib        d: device memory (cpu: host memory)
      sum_M u  <= max_utilization              u = rps x latency_ms / 1000 / cores_per_device
      pod_base_mib + sum_M h <= host_alloc_mib h: host memory
  node of shape t: at most `slots` pods, sum of its pods' host memory <= host_alloc_mib
  cost = sum of the nodes' prices (no platform costs)

Capacities are compared with a relative tolerance of 1e-9. The node shapes (allocatable
resources) come from `packing.model.resources`, which is a pure function of the catalogue.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from contracts import ModelSpec
from packing.model.resources import NodeShape

TOL = 1e-9
MAX_MODELS = 6
MAX_SHAPES = 3


def set_partitions(items: Sequence[int]) -> Iterator[List[Tuple[int, ...]]]:
    """Every partition of `items` into non-empty blocks (Bell(n) of them), each exactly once."""
    items = list(items)
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        # `first` opens a block of its own, or joins one of the blocks of the rest.
        yield [(first,)] + part
        for k in range(len(part)):
            yield part[:k] + [(first,) + part[k]] + part[k + 1:]


@dataclass(frozen=True)
class Need:
    d: float  # pod memory: device memory (cpu: host memory)
    h: float  # host memory added to the pod's process
    u: float  # utilisation of one pod


def needs(models: Sequence[ModelSpec], shapes: Sequence[NodeShape]) -> List[List[Optional[Need]]]:
    """needs[m][t]: what model m takes in a pod of shape t, or None without a profile there."""
    out: List[List[Optional[Need]]] = []
    for m in models:
        row: List[Optional[Need]] = []
        for s in shapes:
            p = m.profiles.get(s.processor)
            if p is None:
                row.append(None)
                continue
            d = p.host_memory_mib if s.processor == "cpu" else p.device_memory_mib
            row.append(Need(float(d), float(p.host_memory_mib), m.rps * p.latency_ms / 1000.0 / s.cores_per_device))
        out.append(row)
    return out


def _within(total: float, cap: float) -> bool:
    return total <= cap * (1 + TOL)


class BruteForce:
    def __init__(self, models: Sequence[ModelSpec], shapes: Sequence[NodeShape], max_utilization: float):
        if len(models) > MAX_MODELS or len(shapes) > MAX_SHAPES:
            raise ValueError(f"brute force is for at most {MAX_MODELS} models and {MAX_SHAPES} shapes")
        self.models = list(models)
        self.shapes = list(shapes)
        self.max_u = max_utilization
        self.need = needs(models, shapes)
        self._node_pods: Dict[Tuple[FrozenSet[int], int], Optional[Tuple[Tuple[int, ...], ...]]] = {}

    def pod_host(self, pod: Sequence[int], t: int) -> Optional[float]:
        """The pod's host memory if `pod` fits one pod of shape t, else None."""
        s = self.shapes[t]
        ns = [self.need[m][t] for m in pod]
        if any(n is None for n in ns):
            return None
        if not _within(sum(n.d for n in ns), s.device_memory_cap_mib):
            return None
        if not _within(sum(n.u for n in ns), self.max_u):
            return None
        host = s.pod_base_mib + sum(n.h for n in ns)
        if not _within(host, s.host_alloc_mib):
            return None
        return host

    def node_pods(self, block: FrozenSet[int], t: int) -> Optional[Tuple[Tuple[int, ...], ...]]:
        """A split of `block` into pods that one node of shape t holds, or None if none does."""
        if (block, t) not in self._node_pods:
            self._node_pods[(block, t)] = self._split(block, t)
        return self._node_pods[(block, t)]

    def _split(self, block: FrozenSet[int], t: int) -> Optional[Tuple[Tuple[int, ...], ...]]:
        s = self.shapes[t]
        for pods in set_partitions(sorted(block)):
            if len(pods) > s.slots:
                continue
            hosts = [self.pod_host(p, t) for p in pods]
            if any(h is None for h in hosts):
                continue
            if _within(sum(hosts), s.host_alloc_mib):
                return tuple(pods)
        return None

    def node_cost(self, block: FrozenSet[int]) -> Tuple[float, Optional[int]]:
        """The cheapest shape one node holding exactly `block` can have (inf if none)."""
        best, best_t = math.inf, None
        for t, s in enumerate(self.shapes):
            if s.price < best and self.node_pods(block, t) is not None:
                best, best_t = s.price, t
        return best, best_t

    def solve(self) -> Tuple[float, List[Tuple[str, List[List[str]]]]]:
        """(optimal instance cost, its nodes as (shape name, pods of model ids)); inf if infeasible."""
        best, best_nodes = math.inf, None
        costs: Dict[FrozenSet[int], Tuple[float, Optional[int]]] = {}
        for nodes in set_partitions(range(len(self.models))):
            total = 0.0
            for block in nodes:
                key = frozenset(block)
                if key not in costs:
                    costs[key] = self.node_cost(key)
                total += costs[key][0]
                if total >= best:
                    break
            if total < best - 1e-12:
                best, best_nodes = total, nodes
        if best_nodes is None:
            return math.inf, []
        described = []
        for block in best_nodes:
            _, t = costs[frozenset(block)]
            pods = self.node_pods(frozenset(block), t)
            described.append((self.shapes[t].name, [[self.models[m].id for m in p] for p in pods]))
        return best, described


def optimum(models: Sequence[ModelSpec], shapes: Sequence[NodeShape], max_utilization: float) -> float:
    """The least instance cost ($/h, no platform) of any feasible packing; inf if there is none."""
    return BruteForce(models, shapes, max_utilization).solve()[0]


def violations(plan, models: Sequence[ModelSpec], shapes: Sequence[NodeShape], max_utilization: float) -> List[str]:
    """Where a contracts.Plan breaks the rules above, against the allocatable resources of the
    node shapes (stricter than ../shared/tools/check_plan.py, which uses raw node memory)."""
    problems: List[str] = []
    index = {m.id: k for k, m in enumerate(models)}
    by_name = {s.name: (t, s) for t, s in enumerate(shapes)}
    need = needs(models, shapes)
    placed: Dict[str, str] = {}
    nodes: Dict[Tuple[str, int], List[Tuple[int, float]]] = {}
    for sv in plan.servers:
        if sv.instance_type not in by_name:
            problems.append(f"{sv.id}: instance type {sv.instance_type} is not a usable shape")
            continue
        t, s = by_name[sv.instance_type]
        for m in sv.models:
            if m in placed:
                problems.append(f"model {m} is on {placed[m]} and {sv.id}")
            placed[m] = sv.id
        ns = [need[index[m]][t] for m in sv.models if m in index]
        if len(ns) != len(sv.models) or any(n is None for n in ns):
            problems.append(f"{sv.id}: a model without a {s.processor} profile, or an unknown model")
            continue
        mem = sum(n.d for n in ns)
        util = sum(n.u for n in ns) / sv.replicas
        host = s.pod_base_mib + sum(n.h for n in ns)
        if not _within(mem, s.device_memory_cap_mib):
            problems.append(f"{sv.id}: model memory {mem!r} MiB > cap {s.device_memory_cap_mib!r}")
        if not _within(util, max_utilization):
            problems.append(f"{sv.id}: utilisation per pod {util!r} > cap {max_utilization!r}")
        if not _within(host, s.host_alloc_mib):
            problems.append(f"{sv.id}: pod host memory {host!r} MiB > node allocatable {s.host_alloc_mib!r}")
        for p in sv.placements:
            nodes.setdefault((s.name, p.instance_index), []).append((p.device_index, host))
    missing = sorted(set(index) - set(placed))
    if missing:
        problems.append(f"models not placed: {missing}")
    for (name, i), pods in sorted(nodes.items()):
        _, s = by_name[name]
        devices = [d for d, _ in pods]
        if len(pods) > s.slots or len(set(devices)) != len(devices) or max(devices) >= s.slots:
            problems.append(f"{name}#{i}: pods on devices {devices}, {s.slots} slots")
        total = sum(h for _, h in pods)
        if not _within(total, s.host_alloc_mib):
            problems.append(f"{name}#{i}: pods' host memory {total!r} MiB > allocatable {s.host_alloc_mib!r}")
        if i >= plan.instances.get(name, 0):
            problems.append(f"{name}#{i}: beyond the {plan.instances.get(name, 0)} instances the plan counts")
    return problems


def packing_cost(nodes: Sequence[Tuple[str, Sequence[Sequence[str]]]], models: Sequence[ModelSpec],
                 shapes: Sequence[NodeShape], max_utilization: float) -> float:
    """The instance cost of a packing given as nodes (shape name, pods of model ids), after
    checking it by the rules above, for any number of models; raises ValueError where it breaks one."""
    index = {m.id: k for k, m in enumerate(models)}
    by_name = {s.name: t for t, s in enumerate(shapes)}
    need = needs(models, shapes)
    seen: List[str] = []
    cost = 0.0
    for name, pods in nodes:
        t = by_name[name]
        s = shapes[t]
        if len(pods) > s.slots:
            raise ValueError(f"{name}: {len(pods)} pods, {s.slots} slots")
        total = 0.0
        for pod in pods:
            ns = [need[index[m]][t] for m in pod]
            if any(n is None for n in ns):
                raise ValueError(f"{name}: {pod} has a model without a {s.processor} profile")
            host = s.pod_base_mib + sum(n.h for n in ns)
            if not (_within(sum(n.d for n in ns), s.device_memory_cap_mib) and _within(sum(n.u for n in ns), max_utilization)
                    and _within(host, s.host_alloc_mib)):
                raise ValueError(f"{name}: pod {pod} breaks a pod limit")
            total += host
            seen.extend(pod)
        if not _within(total, s.host_alloc_mib):
            raise ValueError(f"{name}: pods' host memory {total} > {s.host_alloc_mib}")
        cost += s.price
    if sorted(seen) != sorted(index):
        raise ValueError("not every model placed exactly once")
    return cost
