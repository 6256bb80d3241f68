"""Hand-made instance catalogues and models for the packing tests, and the independent rules a
baseline's plan is checked by (shared by tests/test_baselines.py and tests/test_fleet.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from contracts import InstanceCatalogue, ModelCatalogue, parse
from packing.model.demand import TOLERANCE, Demand, build_demand
from packing.model.profiles import resolve_profiles
from packing.model.resources import NodeShape, PackingOptions, node_shapes
from packing.solve.baselines import BaselineResult, first_fit_decreasing_by_price

ROOT = Path(__file__).resolve().parents[1]
INSTANCES_YAML = ROOT / "config" / "instances.yaml"
PLATFORM = 0.1
COST_TOL = 1e-6


def instance(name: str, price: float, devices: int, device_gib: float = 8, memory_gib: float = 32, vcpu: int = 16,
             max_pods: int = 20, cores: int = 4) -> dict:
    return {"name": name, "processor": "inf1", "price_per_hour": price, "vcpu": vcpu, "memory_gib": memory_gib,
            "devices": devices, "device_memory_gib": device_gib, "cores_per_device": cores, "max_pods": max_pods}


def catalogue(*instances: dict) -> InstanceCatalogue:
    return parse(InstanceCatalogue, {"instances": list(instances), "server_base": {"cpu_m": 100, "memory_mib": 300},
                                     "platform": {"eks_control_plane": PLATFORM}}, "instances.yaml")


def model(mid: str, mem: float, rps: float = 1.0, host: float = 20.0, latency: float = 40.0) -> dict:
    """With latency 40 ms on 4 cores, utilisation = rps / 100."""
    return {"id": mid, "rps": rps, "profiles": {"inf1": {"device_memory_mib": mem, "host_memory_mib": host, "latency_ms": latency}}}


def demand_of(model_dicts: List[dict], cat: InstanceCatalogue, opts: PackingOptions):
    models = parse(ModelCatalogue, {"models": model_dicts}, "models.yaml").models
    profiles, _ = resolve_profiles(models)
    shapes = node_shapes(cat, opts)
    return build_demand(models, profiles, shapes, opts), shapes


def ffd(model_dicts: List[dict], cat: InstanceCatalogue, opts: PackingOptions) -> BaselineResult:
    dem, shapes = demand_of(model_dicts, cat, opts)
    result = first_fit_decreasing_by_price(dem, shapes, opts, PLATFORM)
    assert violations(result, dem, shapes, opts) == []
    return result


def violations(result: BaselineResult, dem: Demand, shapes: List[NodeShape], opts: PackingOptions) -> List[str]:
    """Everything an FFD answer must hold, recomputed from its servers (shared with no solver code)."""
    tol = 1 + TOLERANCE
    out: List[str] = []
    placed = np.zeros(len(dem.model_ids), int)
    host: Dict[tuple, float] = {}
    pods: Dict[tuple, int] = {}
    for k, s in enumerate(result.servers):
        shape, idx = shapes[s.shape], np.asarray(s.models)
        placed[idx] += 1
        if not dem.eligible[idx, s.shape].all():
            out.append(f"server {k}: a model not eligible on {shape.name}")
        if dem.hot[idx, s.shape].any() and (len(s.models) > 1 or s.replicas != dem.replicas[idx[0], s.shape]):
            out.append(f"server {k}: a hot model shares its server or has the wrong replicas")
        if dem.d[idx, s.shape].sum() > shape.device_memory_cap_mib * tol:
            out.append(f"server {k}: model memory over the pod's cap")
        if dem.u[idx, s.shape].sum() / s.replicas > shape.utilisation_cap * tol:
            out.append(f"server {k}: utilisation per pod over the cap")
        if len(s.nodes) != s.replicas or len(set(s.nodes[:opts.min_replicas])) != min(opts.min_replicas, s.replicas):
            out.append(f"server {k}: {s.replicas} replicas on nodes {s.nodes}")
        pod_host = shape.pod_base_mib + float(dem.h[idx, s.shape].sum())
        for n in s.nodes:
            host[(s.shape, n)] = host.get((s.shape, n), 0.0) + pod_host
            pods[(s.shape, n)] = pods.get((s.shape, n), 0) + 1
    if (placed != 1).any():
        out.append(f"{int((placed != 1).sum())} models not placed exactly once")
    for (t, n), mib in host.items():
        if mib > shapes[t].host_alloc_mib * tol:
            out.append(f"{shapes[t].name} #{n}: host memory {mib:.0f} > {shapes[t].host_alloc_mib:.0f} MiB")
    for (t, n), count in pods.items():
        if count > shapes[t].slots:
            out.append(f"{shapes[t].name} #{n}: {count} pods on {shapes[t].slots} slots")
    counted: Dict[str, int] = {}
    for t, _ in pods:
        counted[shapes[t].name] = counted.get(shapes[t].name, 0) + 1
    if counted != result.instances:
        out.append(f"instances {result.instances} but nodes used {counted}")
    cost = sum(s.price * result.instances.get(s.name, 0) for s in shapes) + PLATFORM
    if abs(cost - result.cost_per_hour) > COST_TOL:
        out.append(f"cost {result.cost_per_hour} != {cost}")
    return out
