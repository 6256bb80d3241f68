"""Pure functions: names, labels, route splitting, probe budgets, spreading and Helm sharding."""
from __future__ import annotations

import hashlib
import math
from typing import Dict, Iterable, List, Sequence, Tuple

from charts import constants as c
from charts.capacity import hpa_max_for, node_group_max
from contracts import InstanceType, Server


def server_labels(server_id: str, processor: str) -> Dict[str, str]:
    return {
        c.NAME_LABEL: c.NAME, c.PART_OF_LABEL: c.PART_OF, c.SERVER_LABEL: server_id, c.PROCESSOR_LABEL: processor,
    }


def server_selector(server_id: str) -> Dict[str, str]:
    """What selects a server's pods (a Deployment's selector is immutable: keep it to the id)."""
    return {c.SERVER_LABEL: server_id}


def configmap_name(server_id: str) -> str:
    return f"{server_id}-models"


def route_name(server_id: str, index: int) -> str:
    return f"{server_id}-routes-{index}"


def service_url(server_id: str, namespace: str) -> str:
    return f"http://{server_id}.{namespace}.svc.cluster.local:{c.PORT}"


def models_digest(models: Sequence[str]) -> str:
    """Annotated on the pod template: a changed model list rolls the pods (env from a ConfigMap does not)."""
    return hashlib.sha256(",".join(models).encode()).hexdigest()


def route_chunks(models: Sequence[str], max_matches: int = c.MAX_MATCHES_PER_ROUTE,
                 prefixes: Sequence[str] = c.ROUTE_PREFIXES) -> List[List[str]]:
    """Split a server's models so each HTTPRoute holds at most `max_matches` path matches in all
    (one match per model and prefix)."""
    per_route = max_matches // len(prefixes)
    if per_route < 1:
        raise ValueError(f"{max_matches} matches cannot hold one model's {len(prefixes)} prefixes")
    return [list(models[i:i + per_route]) for i in range(0, len(models), per_route)]


def route_rules(models: Sequence[str], prefixes: Sequence[str] = c.ROUTE_PREFIXES,
                per_rule: int = c.MAX_MATCHES_PER_RULE) -> List[List[str]]:
    """The paths of one route's rules: a rule per prefix (and per `per_rule` models), PathPrefix each."""
    rules = []
    for prefix in prefixes:
        paths = [f"{prefix}{m}" for m in models]
        rules += [paths[i:i + per_rule] for i in range(0, len(paths), per_rule)]
    return rules


def startup_failure_threshold(n_models: int, memory_budget_mib: float, *, base_seconds: float, seconds_per_model: float,
                              load_mib_per_second: float, period_seconds: int) -> int:
    """Startup-probe failures allowed: period x threshold covers fetching and loading every model."""
    seconds = base_seconds + seconds_per_model * n_models + memory_budget_mib / load_mib_per_second
    return max(1, math.ceil(seconds / period_seconds))


def hpa_bounds(replicas: int, hpa_max: int) -> Tuple[int, int]:
    """HPA min is the plan's replicas (the plan's capacity and redundancy); max is the config's, never below min."""
    return replicas, max(replicas, hpa_max)


def pods_per_node(server: Server, instance: InstanceType, cpu_slice_vcpu: int) -> int:
    """How many of this server's pods one node of its type holds: its devices over the devices a pod asks
    for (accelerators), or its cpu slices over the slices a pod's CPU request spans (cpu). At least 1."""
    accel = server.requests.accelerator
    if accel is not None:
        return max(1, (instance.devices or 1) // accel.count)
    slices = instance.vcpu // cpu_slice_vcpu
    per_pod = max(1, math.ceil(server.requests.cpu_m / (cpu_slice_vcpu * 1000)))
    return max(1, slices // per_pod)


def hpa_max(server: Server, instance: InstanceType, nodes_in_plan: int, burst_factor: float, configured_max: int,
            cpu_slice_vcpu: int) -> int:
    """The server's HPA maximum: the config's, cut to what its node group can hold at the group's maximum size
    (the stacks size it ceil(nodes x burst_factor) with the same function), never below the plan's replicas.
    Per server: every server of a group at its maximum at once may still outgrow the group."""
    spare = node_group_max(nodes_in_plan, burst_factor) - nodes_in_plan
    return hpa_max_for(server.replicas, pods_per_node(server, instance, cpu_slice_vcpu), spare, configured_max)


def spread_hostname_strict(replicas: int, instance_indices: Iterable[int]) -> bool:
    """Replicas must land on distinct nodes (DoNotSchedule) when the plan placed them on distinct
    instances; where the plan shares an instance between replicas, spreading is only preferred."""
    indices = list(instance_indices)
    return replicas > 1 and len(set(indices)) == len(indices)


def shard(sizes: Sequence[Tuple[str, int]], budget: int) -> List[List[str]]:
    """Consecutive groups (in the given order) whose sizes sum to at most `budget`; an item larger than
    the budget gets a shard of its own. Sorted input keeps a server in the same shard across small plan changes."""
    shards: List[List[str]] = []
    total = budget + 1
    for key, size in sizes:
        if total + size > budget:
            shards.append([])
            total = 0
        shards[-1].append(key)
        total += size
    return shards


def shard_name(index: int) -> str:
    return f"servers-{index:03d}"
