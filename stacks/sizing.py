"""Node groups from a plan: pure functions, no CDK (tested without a synth).

One managed node group per instance type in the plan: desired = the plan's count, min = the count
(the plan is what the fleet needs), max = ceil(count x burst factor) for the cluster autoscaler.
Accelerator nodes carry a NoSchedule taint so only pods that tolerate it (the servers of that
processor, their device plugin) land there; the system node group is untainted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

# Taint keys and the processor label are shared with the charts (charts/constants.py, no cdk8s import):
# the servers tolerate the taint of their processor.
from charts.constants import GPU_TAINT_KEY, INSTANCE_TYPE_LABEL, NEURON_TAINT_KEY, TAINT_VALUE  # noqa: E402
from charts.constants import PROCESSOR_LABEL as LABEL_PROCESSOR  # noqa: E402
from contracts.models import Plan
from stacks.settings import SettingsError, max_size

# Node pool label (the charts select nodes by the well-known instance-type label).
LABEL_POOL = "modelfleet.io/pool"
__all__ = ["GPU_TAINT_KEY", "NEURON_TAINT_KEY", "INSTANCE_TYPE_LABEL", "LABEL_PROCESSOR", "LABEL_POOL"]

AMI_STANDARD = "AL2023_X86_64_STANDARD"
AMI_NVIDIA = "AL2023_X86_64_NVIDIA"
AMI_NEURON = "AL2023_X86_64_NEURON"

FAMILY_AMI = {"c5": AMI_STANDARD, "g4dn": AMI_NVIDIA, "g5": AMI_NVIDIA, "inf1": AMI_NEURON, "inf2": AMI_NEURON}
FAMILY_PROCESSOR = {"c5": "cpu", "g4dn": "gpu", "g5": "gpu", "inf1": "inf1", "inf2": "inf2"}
FAMILY_TAINT = {"g4dn": GPU_TAINT_KEY, "g5": GPU_TAINT_KEY, "inf1": NEURON_TAINT_KEY, "inf2": NEURON_TAINT_KEY}

# Root volume: Neuron and CUDA images are several GB each.
FAMILY_DISK_GIB = {"c5": 50, "g4dn": 100, "g5": 100, "inf1": 100, "inf2": 100}


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

    @property
    def neuron(self) -> bool:
        return self.ami_type == AMI_NEURON

    @property
    def nvidia(self) -> bool:
        return self.ami_type == AMI_NVIDIA


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
        taint_key: Optional[str] = FAMILY_TAINT.get(family)
        taints = (Taint(taint_key, TAINT_VALUE, "NO_SCHEDULE"),) if taint_key else ()
        name = instance_type.replace(".", "-")
        labels = ((LABEL_PROCESSOR, processor), (LABEL_POOL, name))
        specs.append(NodeGroupSpec(
            name=name, instance_type=instance_type, family=family, processor=processor,
            ami_type=FAMILY_AMI[family], desired=count, min_size=count,
            max_size=max_size(count, burst_factor), labels=labels, taints=taints,
            disk_gib=FAMILY_DISK_GIB[family],
        ))
    return specs


def plan_node_groups(plan: Plan, *, burst_factor: float, allowed_families: Sequence[str],
                     label: str = "plan") -> List[NodeGroupSpec]:
    return node_group_specs(plan.instances, burst_factor=burst_factor, allowed_families=allowed_families,
                            label=label)


def processors_in(specs: Sequence[NodeGroupSpec]) -> Dict[str, List[NodeGroupSpec]]:
    out: Dict[str, List[NodeGroupSpec]] = {}
    for spec in specs:
        out.setdefault(spec.processor, []).append(spec)
    return out
