"""How far a node group may grow and how far one server's HPA may scale within it: pure arithmetic
shared by the stacks (node group sizes) and the charts (HPA maximums), so the two never disagree.

    node_group_max(desired_nodes: int, burst_factor: float) -> int
        The node group's maximum size for the cluster autoscaler: ceil(desired_nodes x burst_factor),
        never below desired_nodes (a burst factor of 1 means no headroom). 0 nodes stay 0.

    hpa_max_for(server_replicas: int, pods_per_node: int, spare_nodes: int, configured_max: int) -> int
        One server's HPA maximum: the configured maximum (`replicas.hpa_max` of config/<env>.yaml),
        cut to what the node group's spare nodes can hold for this server
        (server_replicas + spare_nodes x pods_per_node), and never below server_replicas (the HPA's
        minimum is the plan's replicas; an HPA whose maximum is below its minimum is invalid).

`pods_per_node` is how many of this server's pods one node of its type can hold: one pod per device,
so the node's devices (GPUs, Inferentia chips, or cpu slices). `spare_nodes` is the node group's
maximum minus its desired size. The bound is per server: any one server can reach its maximum, but
the spare nodes are shared by every server of the node group, so all of them at their maximum at once
may still leave pods Pending until the plan is remade for the new traffic.
"""
from __future__ import annotations

import math

__all__ = ["node_group_max", "hpa_max_for"]

# ceil(3 x 1.1) must be 4 and not 4.000000001 -> 5: float products such as 10 x 1.1 = 11.000000000000002
# would otherwise round up one node too many.
_EPSILON = 1e-9


def node_group_max(desired_nodes: int, burst_factor: float) -> int:
    if desired_nodes < 0:
        raise ValueError(f"desired_nodes must be >= 0, got {desired_nodes}")
    if burst_factor < 1:
        raise ValueError(f"burst_factor must be >= 1 (1 means no headroom), got {burst_factor}")
    return max(desired_nodes, math.ceil(desired_nodes * burst_factor - _EPSILON))


def hpa_max_for(server_replicas: int, pods_per_node: int, spare_nodes: int, configured_max: int) -> int:
    if server_replicas < 1:
        raise ValueError(f"server_replicas must be >= 1, got {server_replicas}")
    if pods_per_node < 1:
        raise ValueError(f"pods_per_node must be >= 1 (one pod per device), got {pods_per_node}")
    if spare_nodes < 0:
        raise ValueError(f"spare_nodes must be >= 0 (the node group's max minus its desired size), got {spare_nodes}")
    if configured_max < 1:
        raise ValueError(f"configured_max must be >= 1, got {configured_max}")
    room = server_replicas + spare_nodes * pods_per_node
    return max(server_replicas, min(configured_max, room))
