"""Nodes that already exist, for a re-plan: pods that keep their (node, device) stay put, new
pods go into free devices of open nodes first, and a node opens only when none has room.

A node of shape t has `slots` devices (one pod each) and `host_alloc_mib` of host memory for its
pods. The SLO tiers of one instance type are shapes that differ only in what their pods may hold,
so they share nodes: nodes are kept per instance type (`resources.node_groups`), and a node index
is an index among that type's nodes, as a plan's `instance_index` is. `assemble.place_on_nodes`
packs a fresh plan with this placer too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Set, Tuple

from packing.model.resources import NodeShape, node_groups, node_host_cap


@dataclass
class OpenNode:
    devices: Dict[int, int] = field(default_factory=dict)  # device index -> server key
    host_used: float = 0.0


class NodePool:
    """The nodes of every instance type, each a map of its occupied devices; pods keyed by a
    server key. Methods take a shape t; `nodes` is keyed by its type's first shape (`group[t]`)."""

    def __init__(self, shapes: Sequence[NodeShape]) -> None:
        self.shapes = shapes
        self.group = node_groups(shapes)
        self.nodes: Dict[int, List[OpenNode]] = {}

    def node(self, t: int, n: int) -> OpenNode:
        return self._node(t, n)

    def _node(self, t: int, n: int) -> OpenNode:
        nodes = self.nodes.setdefault(self.group[t], [])
        while len(nodes) <= n:
            nodes.append(OpenNode())
        return nodes[n]

    def host_room(self, t: int, n: int) -> float:
        return node_host_cap(self.shapes[t]) - self._node(t, n).host_used

    def occupy(self, t: int, n: int, d: int, key: int, host: float) -> bool:
        """Put a pod back where it was; False (and nothing changes) where it no longer fits."""
        node = self._node(t, n)
        if d >= self.shapes[t].slots or d in node.devices or host > self.host_room(t, n):
            return False
        node.devices[d] = key
        node.host_used += host
        return True

    def grow(self, t: int, n: int, extra_host: float) -> None:
        self._node(t, n).host_used += extra_host

    def place(self, t: int, key: int, host: float, apart_from: Set[int], must_be_apart: bool) -> Tuple[int, int]:
        """A new pod: best fit by host memory among open nodes with a free device, preferring
        nodes that hold none of its server's other pods (`apart_from`); a new node otherwise."""
        shape = self.shapes[t]
        nodes = self.nodes.setdefault(self.group[t], [])
        fits = [n for n, node in enumerate(nodes) if len(node.devices) < shape.slots and host <= self.host_room(t, n)]
        apart = [n for n in fits if n not in apart_from]
        pool = apart if (apart or must_be_apart) else fits
        if pool:
            n = min(pool, key=lambda n: (self.host_room(t, n) - host, n))
        else:
            if host > node_host_cap(shape):
                raise AssertionError(f"a pod of {host:.0f} MiB cannot fit a {shape.name} node")
            nodes.append(OpenNode())
            n = len(nodes) - 1
        node = nodes[n]
        d = min(set(range(shape.slots)) - set(node.devices))
        node.devices[d] = key
        node.host_used += host
        return n, d

    def compact(self) -> Tuple[Dict[Tuple[int, int], int], Dict[int, int]]:
        """Drop empty nodes, keeping the others' order: (old (shape, node) -> new node index, for
        every shape of the type, and nodes per type, keyed by its first shape)."""
        members: Dict[int, List[int]] = {}
        for t, g in enumerate(self.group):
            members.setdefault(g, []).append(t)
        renumber: Dict[Tuple[int, int], int] = {}
        counts: Dict[int, int] = {}
        for g, nodes in self.nodes.items():
            for n, node in enumerate(nodes):
                if node.devices:
                    for t in members[g]:
                        renumber[t, n] = counts.get(g, 0)
                    counts[g] = counts.get(g, 0) + 1
        return renumber, counts

