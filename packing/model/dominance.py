"""Instance types no optimum needs."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from packing.model.demand import Demand
from packing.model.resources import NodeShape


def _kind(s: NodeShape) -> tuple:
    """Shapes compare only within one processor, core count and SLO tier (same models, same cap)."""
    return (s.processor, s.cores_per_device, s.utilisation_cap, s.slo_ms, s.service_ceiling_ms, s.request_cpu_ms)


def undominated(dem: Demand, shapes: Sequence[NodeShape]) -> List[int]:
    """Shapes worth considering, in their order. B is dominated by A (same processor, cores,
    utilisation cap and SLO tier: a model loads a pod of either alike) when one A node can take
    the place of any B node at no higher price: at least as many slots, as much pod memory, no
    larger server base, and room for whatever host memory B's pods could need, one pod and a
    node of them. At one price A must also come first by name, so of two identical shapes one
    stays. Dropping B changes no optimum's cost, so a bound over the rest still holds for the
    whole catalogue."""
    most_host = []
    for t, s in enumerate(shapes):
        ok = dem.eligible[:, t]
        h, d = dem.h[ok, t], dem.d[ok, t]
        ratio = float(np.max(h / np.maximum(d, 1e-9), initial=0.0))
        per_pod = s.pod_base_mib + min(float(h.sum()), s.device_memory_cap_mib * ratio, s.host_alloc_mib)
        most_host.append(min(per_pod, s.host_alloc_mib))
    keep = []
    for b, sb in enumerate(shapes):
        dominated = False
        for a, sa in enumerate(shapes):
            if a == b or _kind(sa) != _kind(sb):
                continue
            better = (sa.slots >= sb.slots and sa.price <= sb.price and sa.device_memory_cap_mib >= sb.device_memory_cap_mib
                      and sa.pod_base_mib <= sb.pod_base_mib and sa.host_alloc_mib >= most_host[b]
                      and sa.host_alloc_mib >= min(sb.host_alloc_mib, sb.slots * most_host[b]))
            strictly = (sa.price, sa.name) < (sb.price, sb.name)
            if better and strictly:
                dominated = True
                break
        if not dominated:
            keep.append(b)
    return keep


