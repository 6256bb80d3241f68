"""What scales a server out: a KEDA ScaledObject on the requests it has in flight, or the CPU HPA.

An accelerator pod (gpu, inf1, inf2) spends about a millisecond of host CPU per request while its device
does the work, so its CPU utilisation barely moves with its load and a CPU HPA never scales it out. Such
servers get a KEDA `ScaledObject` (keda.sh/v1alpha1) instead, whose `prometheus` trigger reads
`sum(modelfleet_inflight_requests{namespace, server})` (the servers' gauge, as the PodMonitor labels it)
with `metricType: AverageValue`: KEDA's HPA keeps the average in flight per pod at or below the target
`inflight_target` derives from the plan. Min and max are the HPA's (the plan's replicas; what the node
group can hold), and so is the scale-down behaviour. `autoscaling` in config/<env>.yaml chooses per kind
of processor (charts.config.Autoscaling).

The target, by Little's law (in flight = arrival rate x mean time in the pod), at the pod's utilisation
cap u* (`utilisation_cap`: the load at which its predicted P90 reaches its SLO, never above
--max-utilization). Per pod, with c streams
(a GPU: 1, an Inferentia chip: its NeuronCores, a cpu slice: its vCPUs), batch-1 mean service time S and
the server's own host work h per request (tokenising, HTTP, JSON), at the rate lambda* of the cap:

    L* = lambda* (S + Wq + h) = a* + Lq + lambda* h

- a* = lambda* S = u* c: requests in service (the plan's utilisation is rps x latency / cores).
- Lq = lambda* Wq: requests waiting. The wait is Allen-Cunneen's M/G/c, as the README's latency model
  states: Wq = C(c, a*) E[S^2] / (2 E[S]) / (c - a*), C being Erlang C. Traced models serve in nearly
  constant time (E[S^2] = E[S]^2), so Lq = a* C(c, a*) / (2 (c - a*)), which needs neither S nor the rate.
- lambda* h: requests in the server's own work, on accelerator pods done on the host beside the device.
  The plan states neither rate nor service time, but an accelerator pod requests its server base plus
  that work at its planned rate (README, "What is packed": ceil(server_base.cpu_m + rate x h) millicores),
  so lambda_plan x h = requests.cpu_m - server_base.cpu_m (millicores: ms of CPU per second), and at the
  cap lambda* h = that x u* / predicted.utilisation. This is the term through which the target falls with
  the service time: at the same utilisation a slower model means fewer requests per second, so fewer in
  the host's part of their journey. On cpu pods the host work runs on the slice's own cores and the
  request is the whole slice, so the rate cannot be read back: the term is left out there (a lower target:
  the server scales out a little early).

Where the estimate is off, and which way: a pod of models with unlike service times waits longer than
constant service says (the target is low: scale-out comes early, never late); a CPU request capped
at the node's CPU share understates the host term; batching under load (not in the plan's figures) lets a
pod carry more than u* before it has L* in flight, so it scales out at a little above its cap. The target
is rounded down to a tenth (early rather than late) and is never below 1 (one request in flight means a
lightly loaded pod, not a reason to add pods).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping

import cdk8s
from constructs import Construct

from charts.config import Autoscaling
from contracts import ContractError, InstanceCatalogue, InstanceType, Plan, Server

KEDA_API = "keda.sh/v1alpha1"
INFLIGHT_METRIC = "modelfleet_inflight_requests"
# Both autoscalers: scale out at once (the HPA's default policies), scale in only after ten quiet minutes,
# since a pod that is removed and needed again costs a whole model load.
SCALE_DOWN_STABILIZATION_SECONDS = 600
# How often KEDA reads Prometheus: the HPA controller's own sync period, so neither waits on the other.
POLLING_SECONDS = 15
MIN_INFLIGHT_TARGET = 1.0



def scaler_for(processor: str, choice: Autoscaling) -> str:
    """The config's choice for this processor: `accelerator` for gpu/inf1/inf2, `cpu` for cpu."""
    return choice.cpu if processor == "cpu" else choice.accelerator


def erlang_c(streams: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c with `offered` load (in streams), by Erlang B's stable
    recurrence B_k = a B_(k-1) / (k + a B_(k-1)) and C = B / (1 - rho + rho B)."""
    if offered <= 0:
        return 0.0
    if offered >= streams:
        return 1.0
    b = 1.0
    for k in range(1, streams + 1):
        b = offered * b / (k + offered * b)
    rho = offered / streams
    return b / (1 - rho + rho * b)


def inflight_at_cap(cap: float, streams: int, host_inflight: float = 0.0) -> float:
    """L* = a* + Lq + host_inflight with a* = cap x streams and constant service (module docstring).
    ValueError when the cap leaves no queue bound (a* >= streams)."""
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    if not 0 < cap < 1:
        raise ValueError(f"a utilisation cap of {cap} leaves the queue unbounded: the cap must be in (0, 1)")
    if host_inflight < 0:
        raise ValueError(f"host_inflight must be >= 0, got {host_inflight}")
    a = cap * streams
    waiting = a * erlang_c(streams, a) / (2 * (streams - a))
    return a + waiting + host_inflight


def rounded_target(inflight: float) -> float:
    """Down to a tenth (scale out early rather than late), never below MIN_INFLIGHT_TARGET."""
    return max(MIN_INFLIGHT_TARGET, math.floor(inflight * 10 + 1e-9) / 10)


def cap_of(server: Server, plan_options: Mapping[str, Any]) -> float:
    """The pod's utilisation cap: its own (every plan since SLO tiers states one), else the plan's
    --max-utilization, else the load the plan sized it for."""
    if server.utilisation_cap is not None:
        return server.utilisation_cap
    if plan_options.get("max_utilization") is not None:
        return float(plan_options["max_utilization"])
    return server.predicted.utilisation


def streams_of(server: Server, instance: InstanceType, cpu_slice_vcpu: int) -> int:
    """Parallel streams of one pod: a cpu slice's vCPUs, else the device's cores (ARCHITECTURE.md, "Device")."""
    return cpu_slice_vcpu if server.processor == "cpu" else int(instance.cores_per_device or 1)


def host_inflight_at_cap(server: Server, base_cpu_m: float, cap: float) -> float:
    """lambda* h for an accelerator pod, from its CPU request (module docstring); 0 for cpu pods and for a
    pod the plan gave no load."""
    if server.processor == "cpu" or server.predicted.utilisation <= 0:
        return 0.0
    planned_work_cores = max(0.0, server.requests.cpu_m - math.ceil(base_cpu_m)) / 1000.0
    return planned_work_cores * cap / server.predicted.utilisation


def inflight_target(server: Server, instance: InstanceType, catalogue: InstanceCatalogue,
                    plan_options: Mapping[str, Any]) -> float:
    """Requests in flight per pod at the pod's utilisation cap, rounded (rounded_target). ContractError
    naming the server when its cap leaves the queue unbounded."""
    cap = cap_of(server, plan_options)
    try:
        inflight = inflight_at_cap(cap, streams_of(server, instance, catalogue.cpu_slice_vcpu),
                                   host_inflight_at_cap(server, catalogue.server_base.cpu_m, cap))
    except ValueError as exc:
        raise ContractError(
            f"server {server.id}: no in-flight target for its ScaledObject: {exc}; plan with --max-utilization "
            f"below 1, or scale {server.processor} servers on CPU (autoscaling: in the environment config)") from exc
    return rounded_target(inflight)


def inflight_targets(plan: Plan, instances: InstanceCatalogue, choice: Autoscaling) -> Dict[str, float]:
    """The target of every server that scales with KEDA (the config's choice for its processor); the others,
    absent here, keep the CPU HPA."""
    types = instances.by_name()
    return {s.id: inflight_target(s, types[s.instance_type], instances, plan.options)
            for s in plan.servers if scaler_for(s.processor, choice) == "keda"}


def inflight_query(namespace: str, server_id: str) -> str:
    """PromQL: the server's requests in flight over all its pods and models (the PodMonitor gives every
    scraped series `namespace`, `pod` and `server`)."""
    return f'sum({INFLIGHT_METRIC}{{namespace="{namespace}",server="{server_id}"}})'


def threshold_text(target: float) -> str:
    """KEDA reads the threshold as a number in a string: "3", "2.8"."""
    return f"{target:.1f}".removesuffix(".0")


@dataclass(frozen=True)
class QueueScaling:
    """A server scaled by KEDA: its in-flight target per pod, and where Prometheus answers."""

    inflight_target: float
    prometheus_url: str


class KedaScaledObject(cdk8s.ApiObject):
    """keda.sh/v1alpha1 ScaledObject (tests/crds/keda-v2.20.2); the spec is plain JSON, one patch."""

    def __init__(self, scope: Construct, id: str, *, name: str, namespace: str, labels: Mapping[str, str],
                 spec: Dict[str, Any]) -> None:
        super().__init__(scope, id, api_version=KEDA_API, kind="ScaledObject",
                         metadata=cdk8s.ApiObjectMetadata(name=name, namespace=namespace, labels=dict(labels)))
        self.add_json_patch(cdk8s.JsonPatch.add("/spec", spec))


def scaled_object_spec(server_id: str, namespace: str, min_replicas: int, max_replicas: int,
                       scaling: QueueScaling) -> Dict[str, Any]:
    """The ScaledObject's spec for a server's Deployment (named as the server)."""
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": server_id},
        "pollingInterval": POLLING_SECONDS,
        # Only scaling to zero waits for the cooldown, and the minimum is at least one pod: set to the
        # scale-down window anyway, so that no default of KEDA's differs from the HPA's behaviour.
        "cooldownPeriod": SCALE_DOWN_STABILIZATION_SECONDS,
        "minReplicaCount": min_replicas,
        "maxReplicaCount": max_replicas,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
            "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_STABILIZATION_SECONDS}}}},
        "triggers": [{
            "type": "prometheus", "name": "inflight", "metricType": "AverageValue",
            "metadata": {"serverAddress": scaling.prometheus_url, "query": inflight_query(namespace, server_id),
                         "threshold": threshold_text(scaling.inflight_target)},
        }],
    }

