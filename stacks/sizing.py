"""Node groups from a plan: pure functions, no CDK (tested without a synth).

One managed node group per instance type in the plan: desired = the plan's count, min = the count
(the plan is what the fleet needs), max = charts.capacity.node_group_max(count, burst factor) for the
cluster autoscaler (the charts cap each HPA with the same arithmetic). Every plan node group, cpu
included, carries `modelfleet.io/plan-node=<processor>:NoSchedule` (charts.constants.plan_node_taint),
so only that processor's servers (and the device plugins, which tolerate the key) land there: the
planner sizes pods to fill the node, and an add-on there would leave a server Pending. The system
node group is untainted and takes every add-on.

Instance metadata: every node's launch template requires IMDSv2. Its hop limit is 1 (pods cannot reach
IMDS; host-network pods such as aws-node still can) unless `pods_need_imds`: the servers use IRSA, and
every add-on is given its region and VPC explicitly, so no pod here needs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Sequence, Tuple

# Taint keys and the processor label are shared with the charts (charts/constants.py, no cdk8s import):
# the servers tolerate the taint of their processor.
from charts.capacity import node_group_max
from charts.constants import INSTANCE_TYPE_LABEL, PLAN_NODE_TAINT_KEY, plan_node_taint
from charts.constants import PROCESSOR_LABEL as LABEL_PROCESSOR
from contracts.models import Plan
from stacks.settings import SettingsError

# Node pool label: `system` on the add-ons' node group, the node group's name on the others (the
# charts select nodes by the well-known instance-type label).
LABEL_POOL = "modelfleet.io/pool"
SYSTEM_POOL = "system"
__all__ = ["PLAN_NODE_TAINT_KEY", "INSTANCE_TYPE_LABEL", "LABEL_PROCESSOR", "LABEL_POOL", "SYSTEM_POOL"]

AMI_STANDARD = "AL2023_X86_64_STANDARD"
AMI_NVIDIA = "AL2023_X86_64_NVIDIA"
AMI_NEURON = "AL2023_X86_64_NEURON"

FAMILY_AMI = {"c5": AMI_STANDARD, "g4dn": AMI_NVIDIA, "g5": AMI_NVIDIA, "inf1": AMI_NEURON, "inf2": AMI_NEURON}
FAMILY_PROCESSOR = {"c5": "cpu", "g4dn": "gpu", "g5": "gpu", "inf1": "inf1", "inf2": "inf2"}
# Root volume (gp3, encrypted): Neuron and CUDA images are several GB each.
FAMILY_DISK_GIB = {"c5": 50, "g4dn": 100, "g5": 100, "inf1": 100, "inf2": 100}
SYSTEM_DISK_GIB = 50
NEURON_PROCESSORS = ("inf1", "inf2")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # NO_SCHEDULE (the CDK enum's name)


@dataclass(frozen=True)
class NodeGroupSpec:
    name: str  # construct id and the node group's name suffix, e.g. inf1-xlarge
    instance_type: str
    family: str
    processor: str
    ami_type: str
    desired: int
    min_size: int
    max_size: int
    labels: Tuple[Tuple[str, str], ...]
    taints: Tuple[Taint, ...]
    disk_gib: int
    pods_need_imds: bool = False

    @property
    def imds_hop_limit(self) -> int:
        return 2 if self.pods_need_imds else 1


def family_of(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def node_group_specs(instances: Mapping[str, int], *, burst_factor: float,
                     allowed_families: Sequence[str], label: str = "plan") -> List[NodeGroupSpec]:
    """One spec per instance type with a positive count, sorted by name (stable construct ids)."""
    specs: List[NodeGroupSpec] = []
    for instance_type in sorted(instances):
        count = int(instances[instance_type])
        if count <= 0:
            continue
        family = family_of(instance_type)
        if family not in FAMILY_AMI:
            raise SettingsError(f"{label}: instance type {instance_type} is of family {family!r}, which the stacks "
                                f"have no AMI for (known: {', '.join(sorted(FAMILY_AMI))})")
        if family not in allowed_families:
            raise SettingsError(f"{label}: instance type {instance_type} (family {family}) is not among this "
                                f"environment's allowed_instance_families ({', '.join(allowed_families)})")
        processor = FAMILY_PROCESSOR[family]
        key, value, effect = plan_node_taint(processor)
        if effect != "NoSchedule":
            raise SettingsError(f"charts.constants.plan_node_taint gives effect {effect!r}: the stacks map only NoSchedule")
        taints = (Taint(key, value, "NO_SCHEDULE"),)
        name = instance_type.replace(".", "-")
        labels = ((LABEL_PROCESSOR, processor), (LABEL_POOL, name))
        specs.append(NodeGroupSpec(
            name=name, instance_type=instance_type, family=family, processor=processor,
            ami_type=FAMILY_AMI[family], desired=count, min_size=count,
            max_size=node_group_max(count, burst_factor), labels=labels, taints=taints,
            disk_gib=FAMILY_DISK_GIB[family],
        ))
    return specs


def plan_node_groups(plan: Plan, *, burst_factor: float, allowed_families: Sequence[str],
                     label: str = "plan") -> List[NodeGroupSpec]:
    return node_group_specs(plan.instances, burst_factor=burst_factor, allowed_families=allowed_families,
                            label=label)


def neuron_scheduler_needed(plan: Plan) -> bool:
    """The Neuron scheduler extension places pods that ask for more than one Neuron device on
    contiguous devices; with one device per pod the default scheduler is right and it only adds a
    component to run. True when some inf1/inf2 server's pod asks for more than one."""
    for server in plan.servers:
        accelerator = server.requests.accelerator
        if server.processor in NEURON_PROCESSORS and accelerator is not None and accelerator.count > 1:
            return True
    return False
