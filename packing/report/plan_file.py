"""The plan file: a solved plan's servers written as the `Plan` contract, with each pod's
predicted figures, the solver's account of its bound and gap, and the pods' loads for the plot."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Dict, List, Mapping, Optional, Sequence

from contracts import InstanceCatalogue, ModelSpec, Plan
from packing.model.demand import Demand
from packing.model.latency import Stream, pod_p90_ms
from packing.model.resources import NodeShape, PackingOptions, nodes_price
from packing.model.tiers import service_of
from packing.place.assemble import BuiltServer, Solved, memory_request_mib, pod_figures
from packing.report.loads import ModelLoad, PodLoad


@dataclass
class PlanResult:
    plan: Plan
    pods: List[PodLoad]
    demand: Demand


def server_ids(servers: Sequence[BuiltServer], shapes: Sequence[NodeShape]) -> List[str]:
    """Ids `<processor>-<NNNN>`, numbered per processor in node order, so they read in placement order."""
    order = sorted(range(len(servers)), key=lambda k: (shapes[servers[k].shape].processor, servers[k].shape,
                                                       servers[k].placements[0], k))
    seq: Dict[str, int] = {}
    ids = [""] * len(servers)
    for k in order:
        proc = shapes[servers[k].shape].processor
        ids[k] = f"{proc}-{seq.get(proc, 0):04d}"
        seq[proc] = seq.get(proc, 0) + 1
    return ids


def pod_streams(s: BuiltServer, dem: Demand) -> List[Stream]:
    """One pod's traffic, model by model, for the latency model (packing/model/latency.py)."""
    shape = dem.shapes[s.shape]
    out = []
    for m in s.models:
        service, after = service_of(shape, float(dem.latency[m, s.shape]), float(dem.p90[m, s.shape]))
        out.append(Stream(float(dem.rps[m]) / s.replicas, service, after))
    return out


def predicted_pod_p90_ms(s: BuiltServer, dem: Demand) -> float:
    return pod_p90_ms(dem.shapes[s.shape].cores_per_device, pod_streams(s, dem))


def pod_cpu_request_m(s: BuiltServer, dem: Demand) -> int:
    """A cpu slice requests its slice; an accelerator pod its server base plus the server's own
    work at the pod's rate (rps x ms per request = millicores), within its share of the node."""
    shape = dem.shapes[s.shape]
    if shape.processor == "cpu":
        return shape.pod_cpu_m
    rate = float(dem.rps[s.models].sum()) / s.replicas
    share = int(shape.cpu_alloc_m // shape.slots)
    return int(min(share, max(shape.pod_cpu_m, math.ceil(shape.pod_cpu_m + rate * shape.request_cpu_ms))))


def latency_model_info(catalogue: InstanceCatalogue) -> Dict[str, object]:
    """What the plan's predicted P90s assume (packing/model/latency.py), so a reader can weigh them."""
    return {"name": "M/G/c (Allen-Cunneen), lognormal service through the profile's p50 and p90",
            "service_at": "each profile's measured sequence length (the traced length); shorter texts run faster",
            "request_cpu_ms": catalogue.server_base.request_cpu_ms,
            "request_cpu_on": "cpu pods: the model's cores (added to service); accelerator pods: the host (added after)",
            "batching": ("not in these figures: every request its own forward (batching adds capacity under load, "
                         "but the plan does not know its servers' MAX_BATCH_SIZE; packing.model.latency.batching_prediction "
                         "models it, checked in make bench-latency)")}


def gap_split(cost: float, lp: float, bound: float) -> Dict[str, float]:
    """The gap (cost - bound) / cost in two parts that add up to it: what whole servers on whole
    nodes cost over the column generation's LP, and what the proof leaves between the LP and the
    bound. The LP is over the classes' upper sizes and may be unconverged, so it is no bound: the
    first part can be negative (first-fit decreasing or emptying servers beat it). Its nodes are
    fractional, so the bound with whole nodes can lie above it: then the proof leaves nothing
    there, and the whole gap is rounding's."""
    if cost <= 0:
        return {"rounding_loss": 0.0, "bound_weakness": 0.0}
    middle = max(lp, bound)
    return {"rounding_loss": round((cost - middle) / cost, 6), "bound_weakness": round((middle - bound) / cost, 6)}


def write_plan(solved: Solved, dem: Demand, ids: Sequence[str], models: Sequence[ModelSpec],
               profile_sources: Mapping[str, Mapping[str, str]], catalogue: InstanceCatalogue, opts: PackingOptions,
               inputs: Optional[Mapping[str, str]], solve_seconds: float) -> PlanResult:
    """The Plan of built servers (`ids[k]` names `solved.built[k]`), with the pods' figures."""
    shapes = dem.shapes
    built, nodes, lower = solved.built, solved.nodes, solved.lower
    info = solved.info

    platform = float(sum(catalogue.platform.values()))
    instances = {shapes[t].name: n for t, n in sorted(nodes.items(), key=lambda kv: shapes[kv[0]].name) if n > 0}
    cost = nodes_price(nodes, shapes) + platform
    bound = min(lower + platform, cost)
    lp = float(info["lp_per_hour"]) + platform

    servers_json, pods = [], []
    models_by_id = {m.id: m for m in models}
    for k in sorted(range(len(built)), key=lambda k: ids[k]):
        s = built[k]
        shape = shapes[s.shape]
        mem, util, _, _ = pod_figures(s, dem)
        accel = shape.accelerator
        model_ids = [dem.model_ids[m] for m in s.models]
        slos = [models_by_id[i].slo_p90_ms for i in model_ids if models_by_id[i].slo_p90_ms is not None]
        servers_json.append({
            "id": ids[k], "instance_type": shape.name, "processor": shape.processor, "replicas": s.replicas,
            "placements": [{"instance_index": n, "device_index": d} for n, d in s.placements],
            "models": model_ids,
            "requests": {"cpu_m": pod_cpu_request_m(s, dem), "memory_mib": memory_request_mib(s),
                         **({"accelerator": {"name": accel[0], "count": accel[1]}} if accel else {})},
            "memory_budget_mib": memory_request_mib(s),
            **({"slo_p90_ms": min(slos)} if slos else {}),
            "utilisation_cap": round(shape.utilisation_cap, 6),
            "predicted": {"utilisation": round(util, 6), "p90_ms": round(predicted_pod_p90_ms(s, dem), 3)},
        })
        pods.append(PodLoad(ids[k], shape.name, shape.processor, s.replicas, shape.device_memory_cap_mib,
                            shape.utilisation_cap,
                            tuple(ModelLoad(dem.model_ids[m], float(dem.d[m, s.shape]), float(dem.u[m, s.shape]) / s.replicas)
                                  for m in s.models)))
        del mem
    plan = Plan.model_validate({
        "schema": 1,
        "inputs": dict(inputs or {}),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items() if k != "time_limit_s"},
        "solver": {**info, "lp_per_hour": round(lp, 6), **gap_split(cost, lp, bound),
                   "fluid_per_hour": round(float(info["fluid_per_hour"]) + platform, 6),
                   "config_bound_per_hour": round(float(info["config_bound_per_hour"]) + platform, 6),
                   "whole_node_bound_per_hour": round(float(info["whole_node_bound_per_hour"]) + platform, 6),
                   "time_limit_s": opts.time_limit_s,
                   "latency_model": latency_model_info(catalogue)},
        "instances": instances,
        "cost_per_hour": round(cost, 6),
        "platform_per_hour": round(platform, 6),
        "lower_bound_per_hour": round(bound, 6) if bound < cost else round(cost, 6),
        "gap": round((cost - bound) / cost, 6) if cost > 0 else 0.0,
        "solve_seconds": round(solve_seconds, 3),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "servers": servers_json,
        "profile_sources": {m.id: dict(profile_sources.get(m.id, {})) for m in models},
    })
    return PlanResult(plan, pods, dem)
