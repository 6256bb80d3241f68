"""Allocatable resources of a node, and what one of its pods may hold (ARCHITECTURE.md,
"Units and definitions"). Pure functions of the instance catalogue and the packing options."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from contracts import InstanceCatalogue, InstanceType

MIB_PER_GIB = 1024
# The one relative tolerance of every capacity comparison: float sums never reject an exact fit.
TOLERANCE = 1e-9
EVICTION_HARD_MIB = 100
ACCELERATOR_RESOURCE = {"gpu": "nvidia.com/gpu", "inf1": "aws.amazon.com/neuron", "inf2": "aws.amazon.com/neuron"}


def kube_reserved_memory_mib(max_pods: int) -> float:
    """The EKS AMI's kube-reserved memory: 255 MiB + 11 MiB per pod the node may run."""
    return 255 + 11 * max_pods


def kube_reserved_cpu_m(vcpu: int) -> float:
    """The EKS AMI's kube-reserved CPU: 6% of the first core, 1% of the second, 0.5% of the
    next two and 0.25% of every core above four."""
    tiers = [(1, 60.0), (1, 10.0), (2, 5.0)]
    reserved, left = 0.0, vcpu
    for cores, per_core in tiers:
        take = min(left, cores)
        reserved += take * per_core
        left -= take
    return reserved + max(left, 0) * 2.5


@dataclass(frozen=True)
class NodeShape:
    """One instance type as the packer sees it: `slots` pods per node, each bound to one device."""

    name: str
    processor: str
    price: float
    slots: int  # pods per node: devices (cpu: slices), limited by max_pods and CPU
    device_memory_cap_mib: float  # model memory one pod may hold (cpu: slice memory less the server base)
    cores_per_device: int
    host_alloc_mib: float  # allocatable host memory for pods
    cpu_alloc_m: float
    pod_cpu_m: int  # each pod's CPU request
    pod_base_mib: float  # the server process itself (Python, torch, runtime)
    utilisation_cap: float  # per pod: --max-utilization, or lower where the pod's SLO tier needs it
    device_memory_mib: float  # the physical device (cpu: the slice's share of allocatable memory)
    request_cpu_ms: float = 0.0  # the server's own CPU per request (catalogue server_base)
    # The SLO tier of this shape's pods (packing/model/tiers.py): a pod holds only models whose SLO is at
    # least `slo_ms` and whose service p90 is at most `service_ceiling_ms`; inf: no limit.
    slo_ms: float = math.inf
    service_ceiling_ms: float = math.inf

    @property
    def tiered(self) -> bool:
        return math.isfinite(self.slo_ms)

    @property
    def accelerator(self) -> Optional[Tuple[str, int]]:
        name = ACCELERATOR_RESOURCE.get(self.processor)
        return (name, 1) if name else None


@dataclass(frozen=True)
class PackingOptions:
    max_utilization: float = 0.83
    max_device_memory_gib: Optional[float] = None
    memory_headroom: float = 0.08
    min_replicas: int = 1
    only_instance_types: Optional[Tuple[str, ...]] = None
    time_limit_s: float = 60.0


def pod_caps(s: NodeShape) -> Tuple[float, float, float]:
    """What one pod of shape s may hold, tolerance included: model memory, utilisation (its SLO
    tier's cap), and host memory for its models (the node's allocatable less the server base).
    Every solver, baseline and re-planner asks this, so a pod is feasible by one rule."""
    tol = 1 + TOLERANCE
    return (s.device_memory_cap_mib * tol, s.utilisation_cap * tol, (s.host_alloc_mib - s.pod_base_mib) * tol)


def node_host_cap(s: NodeShape) -> float:
    """Host memory the pods on one node of shape s may request together, tolerance included."""
    return s.host_alloc_mib * (1 + TOLERANCE)


def pod_fits(s: NodeShape, memory_mib: float, utilisation: float, models_host_mib: float) -> bool:
    """Whether one pod of shape s holds models of these summed figures (utilisation per pod)."""
    mem, util, host = pod_caps(s)
    return memory_mib <= mem and utilisation <= util and models_host_mib <= host


def node_groups(shapes: Sequence[NodeShape]) -> List[int]:
    """For each shape, the first shape of its instance type: SLO tiers of one type share nodes."""
    first: Dict[str, int] = {}
    return [first.setdefault(s.name, t) for t, s in enumerate(shapes)]


def nodes_price(nodes: Mapping[int, int], shapes: Sequence[NodeShape]) -> float:
    """$/h of whole nodes, given as {shape index: count}."""
    return sum(shapes[t].price * n for t, n in nodes.items())


class UnusableInstanceType(ValueError):
    pass


def _device_cap_mib(t: InstanceType, opts: PackingOptions) -> float:
    device_mib = float(t.device_memory_gib or 0) * MIB_PER_GIB
    if opts.max_device_memory_gib is not None:
        return min(opts.max_device_memory_gib * MIB_PER_GIB, device_mib)
    return (1.0 - opts.memory_headroom) * device_mib


def capacity_memory_mib(t: InstanceType, cat: InstanceCatalogue) -> float:
    """Memory the kubelet reports as capacity: the nominal size less the VM's own overhead."""
    return t.memory_gib * MIB_PER_GIB * (1.0 - cat.vm_memory_overhead)


def allocatable_memory_mib(t: InstanceType, cat: InstanceCatalogue) -> float:
    return (capacity_memory_mib(t, cat) - kube_reserved_memory_mib(t.max_pods) - EVICTION_HARD_MIB
            - cat.daemonset_overhead.memory_mib)


def allocatable_cpu_m(t: InstanceType, cat: InstanceCatalogue) -> float:
    return t.vcpu * 1000 - kube_reserved_cpu_m(t.vcpu) - cat.daemonset_overhead.cpu_m - cat.cpu_reserve_m


def node_shape(t: InstanceType, cat: InstanceCatalogue, opts: PackingOptions) -> NodeShape:
    host_alloc = allocatable_memory_mib(t, cat)
    cpu_alloc = allocatable_cpu_m(t, cat)
    base_mib, base_cpu = cat.server_base.memory_mib, cat.server_base.cpu_m
    if t.processor == "cpu":
        devices = t.vcpu // cat.cpu_slice_vcpu
        cores = cat.cpu_slice_vcpu
        # A slice gets an equal share of the node's allocatable memory and CPU.
        slice_mib = math.floor(host_alloc / devices)
        pod_cpu = math.floor(cpu_alloc / devices)
        model_cap = slice_mib - base_mib
        device_mib = float(slice_mib)
        host_alloc = float(slice_mib * devices)
    else:
        devices = int(t.devices or 0)
        cores = int(t.cores_per_device or 1)
        # An accelerator pod requests what its server needs (the server base); tokenising and HTTP
        # may burst above it, since no CPU limit is set, into what the node's other pods leave.
        pod_cpu = int(math.ceil(base_cpu))
        model_cap = _device_cap_mib(t, opts)
        device_mib = float(t.device_memory_gib or 0) * MIB_PER_GIB
    slots = min(devices, t.max_pods)
    if pod_cpu > 0:
        slots = min(slots, int(cpu_alloc // pod_cpu))
    if t.processor != "cpu":
        # Pods request whole MiB (rounded up): keep one MiB per pod for that rounding, so the
        # requests of a node the planner filled still fit its allocatable memory.
        host_alloc = float(math.floor(host_alloc) - slots)
    if pod_cpu < base_cpu or pod_cpu > cpu_alloc or model_cap <= 0 or host_alloc < base_mib or slots < 1:
        raise UnusableInstanceType(
            f"{t.name}: after kube-reserved, eviction, DaemonSet overhead and the server base, a pod "
            f"has {pod_cpu} mCPU and {model_cap:.0f} MiB for models: too small to host a server"
        )
    return NodeShape(
        name=t.name, processor=t.processor, price=t.price_per_hour, slots=slots,
        device_memory_cap_mib=float(model_cap), cores_per_device=cores, host_alloc_mib=float(host_alloc),
        cpu_alloc_m=float(cpu_alloc), pod_cpu_m=int(pod_cpu), pod_base_mib=float(base_mib),
        utilisation_cap=opts.max_utilization, device_memory_mib=device_mib,
        request_cpu_ms=cat.server_base.request_cpu_ms,
    )


def node_shapes(cat: InstanceCatalogue, opts: PackingOptions) -> List[NodeShape]:
    """The shapes the packer may buy: the catalogue, or `--only-instance-types`, minus the unusable."""
    known: Dict[str, InstanceType] = cat.by_name()
    wanted: Sequence[str] = opts.only_instance_types or [t.name for t in cat.instances]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(
            f"--only-instance-types: {', '.join(unknown)} not in the instance catalogue "
            f"(known: {', '.join(sorted(known))})"
        )
    shapes, problems = [], []
    for name in wanted:
        try:
            shapes.append(node_shape(known[name], cat, opts))
        except UnusableInstanceType as exc:
            problems.append(str(exc))
    if not shapes:
        raise ValueError("no usable instance type: " + "; ".join(problems))
    return shapes
