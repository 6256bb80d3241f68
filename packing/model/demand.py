"""The demand model: what each model needs from a pod of each node shape, and where it may go.

Per model m and shape t (processor p):
  memory   d[m,t] = device memory (cpu: host memory, since a cpu slice holds models in RAM)
  host     h[m,t] = host memory the model adds to its pod's process
  load     u[m,t] = rps x latency_ms / 1000 / cores_per_device   (a single pod's utilisation)
  eligible: a profile for p exists, d fits the pod's memory cap, one pod's host memory fits the
            node, and the shape's SLO tier admits it (packing/model/tiers.py: its SLO at least the
            tier's, its service p90 within the tier's ceiling).
Each shape t is one instance type at one SLO tier, with its own utilisation cap (at most
--max-utilization). A model whose load on t exceeds min_replicas x that cap is *hot* there: it
gets its own server with ceil(u / cap) replicas. Arrays are numpy so 100,000 models stay fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence

import numpy as np

from contracts import ModelSpec, Profile
from packing.model.resources import TOLERANCE, NodeShape, PackingOptions, pod_caps
from packing.model.tiers import admitted, slo_levels, tiered_shapes


class UnplaceableModels(ValueError):
    """One or more models fit on no node shape; the message says which and why."""


@dataclass
class Demand:
    model_ids: List[str]
    shapes: List[NodeShape]
    d: np.ndarray  # [models, shapes] MiB
    h: np.ndarray  # [models, shapes] MiB
    u: np.ndarray  # [models, shapes] single-pod utilisation
    p90: np.ndarray  # [models, shapes] batch-1 p90 ms
    latency: np.ndarray  # [models, shapes] batch-1 p50 ms
    eligible: np.ndarray  # [models, shapes] bool
    replicas: np.ndarray  # [models, shapes] pods a server of this model alone needs
    hot: np.ndarray  # [models, shapes] bool: needs a server of its own
    rps: np.ndarray  # [models]

    def on_shapes(self, shapes: Sequence[int]) -> Demand:
        """The demand over some shapes only (indices into this one's)."""
        j = np.asarray(shapes, dtype=int)
        return Demand(self.model_ids, [self.shapes[t] for t in j], self.d[:, j], self.h[:, j], self.u[:, j],
                      self.p90[:, j], self.latency[:, j], self.eligible[:, j], self.replicas[:, j], self.hot[:, j], self.rps)

    def host_per_pod(self, models: Sequence[int], t: int) -> float:
        """Host memory one pod of shape t holding these models requests: the server base and theirs."""
        return self.shapes[t].pod_base_mib + float(self.h[list(models), t].sum())

    def subset(self, models: Sequence[int]) -> Demand:
        """The demand of some models only (indices into this one), renumbered from 0."""
        return _rows(self, np.asarray(models, dtype=int))


def _rows(dem: Demand, idx) -> Demand:
    return Demand([dem.model_ids[i] for i in idx], dem.shapes, dem.d[idx], dem.h[idx], dem.u[idx], dem.p90[idx],
                  dem.latency[idx], dem.eligible[idx], dem.replicas[idx], dem.hot[idx], dem.rps[idx])


def _profile_arrays(models: Sequence[ModelSpec], profiles: Mapping[str, Mapping[str, Profile]], processor: str):
    n = len(models)
    has = np.zeros(n, bool)
    dev, host, lat, p90 = (np.zeros(n) for _ in range(4))
    for i, m in enumerate(models):
        p = profiles.get(m.id, {}).get(processor)
        if p is None:
            continue
        has[i] = True
        dev[i] = max(p.device_memory_mib, p.host_memory_mib) if processor == "cpu" else p.device_memory_mib
        host[i], lat[i], p90[i] = p.host_memory_mib, p.latency_ms, p.p90_ms
    return has, dev, host, lat, p90


def build_demand(
    models: Sequence[ModelSpec],
    profiles: Mapping[str, Mapping[str, Profile]],
    shapes: Sequence[NodeShape],
    opts: PackingOptions,
) -> Demand:
    """The demand over `shapes`, each split into the SLO tiers its models need (packing/model/tiers.py):
    `Demand.shapes` is then the tiered list, each with its own utilisation cap."""
    n = len(models)
    rps = np.array([m.rps for m in models], float)
    slo = np.array([m.slo_p90_ms if m.slo_p90_ms is not None else np.inf for m in models], float)
    by_processor = {p: _profile_arrays(models, profiles, p) for p in {s.processor for s in shapes}}
    fits_base = {}
    for b, s in enumerate(shapes):
        has, dev, host, _, _ = by_processor[s.processor]
        mem_cap, _, host_cap = pod_caps(s)
        fits = (dev <= mem_cap) & (host <= host_cap)
        fits_base[b] = has & fits
    level = slo_levels(slo)
    tiered, base_of = tiered_shapes(
        shapes, level,
        p50={p: a[3] for p, a in by_processor.items()}, p90={p: a[4] for p, a in by_processor.items()},
        has={p: np.logical_or.reduce([fits_base[b] for b, s in enumerate(shapes) if s.processor == p])
             for p in by_processor},
        max_utilisation=opts.max_utilization)
    k = len(tiered)
    d, h, u, p90, lat = (np.zeros((n, k)) for _ in range(5))
    eligible = np.zeros((n, k), bool)
    for j, (s, b) in enumerate(zip(tiered, base_of, strict=True)):
        _, dev, host, la, p9 = by_processor[s.processor]
        d[:, j], h[:, j], lat[:, j], p90[:, j] = dev, host, la, p9
        u[:, j] = rps * la / 1000.0 / s.cores_per_device
        service_p90 = p9 + s.request_cpu_ms
        eligible[:, j] = fits_base[b] & admitted(s, level, service_p90)
    caps = np.array([s.utilisation_cap for s in tiered])
    per_pod = u / opts.min_replicas
    hot = eligible & (per_pod > caps[None, :] * (1 + TOLERANCE))
    replicas = np.maximum(opts.min_replicas, np.ceil(u / np.maximum(caps[None, :], 1e-12) - TOLERANCE)).astype(int)
    demand = Demand([m.id for m in models], tiered, d, h, u, p90, lat, eligible, replicas, hot, rps)
    _require_placeable(models, profiles, demand, slo, opts)
    return demand


def _why_not(m: ModelSpec, i: int, dem: Demand, profiles, slo: np.ndarray, opts: PackingOptions) -> str:
    reasons: Dict[str, str] = {}
    for j, s in enumerate(dem.shapes):
        p = s.processor
        if p in reasons and reasons[p] == "":
            continue
        if p not in profiles.get(m.id, {}):
            reasons[p] = "no profile (inline, measured or reference)"
        elif dem.d[i, j] > pod_caps(s)[0]:
            reasons.setdefault(p, f"needs {dem.d[i, j]:.0f} MiB, the largest pod holds "
                                  f"{s.device_memory_cap_mib:.0f} MiB (see --max-device-memory-gib)")
        elif dem.h[i, j] > pod_caps(s)[2]:
            reasons.setdefault(p, f"needs {dem.h[i, j]:.0f} MiB of host memory, more than a node allocates")
        else:
            own = dem.p90[i, j] + s.request_cpu_ms
            server = f" + {s.request_cpu_ms:g} ms of the server's own work" if s.request_cpu_ms else ""
            reasons.setdefault(p, f"its p90 alone, {dem.p90[i, j]:g} ms{server} = {own:g} ms, exceeds its SLO p90 of "
                                  f"{slo[i]:g} ms even on an idle pod")
    return "; ".join(f"{p}: {r}" for p, r in sorted(reasons.items()))


def _require_placeable(models, profiles, dem: Demand, slo: np.ndarray, opts: PackingOptions) -> None:
    stuck = np.flatnonzero(~dem.eligible.any(axis=1))
    if stuck.size == 0:
        return
    lines = [f"  {models[i].id}: {_why_not(models[i], i, dem, profiles, slo, opts)}" for i in stuck[:10]]
    more = f"\n  ... and {stuck.size - 10} more" if stuck.size > 10 else ""
    shapes = ", ".join(sorted({s.name for s in dem.shapes}))
    raise UnplaceableModels(
        f"{stuck.size} model(s) fit on no instance type ({shapes}):\n" + "\n".join(lines) + more
        + "\nFix: add a profile for another processor, relax the SLO, or allow larger instance types."
    )
