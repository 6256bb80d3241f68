"""The data contracts between the steps (see ../shared/ARCHITECTURE.md, "Data contracts").

Every model forbids unknown fields, so a misspelt key is an error instead of a silent default.
Kept to Python 3.10 syntax: this package also runs inside the Neuron images.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Processor = Literal["cpu", "gpu", "inf1", "inf2"]
PROCESSORS = ("cpu", "gpu", "inf1", "inf2")
Task = Literal["feature-extraction", "sequence-classification", "question-answering"]
Precision = Literal["fp32", "bf16", "fp16"]
ProfileSource = Literal["measured", "reference", "inline"]
# How a bundle's model file is loaded: torch.jit.load (model.pt; every processor) or AOTInductor's
# aoti_load_package (model.pt2; cpu and gpu). Bundles written before the field existed are TorchScript.
ArtifactFormat = Literal["torchscript", "aoti"]
ARTIFACT_FORMATS = ("torchscript", "aoti")

# RFC 1123 label (model ids) and RFC 1035 label (server ids, which become Service names).
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _check_label(value: str, pattern: re.Pattern[str], kind: str, start: str) -> str:
    if not pattern.match(value):
        raise ValueError(
            f"must be a {kind} (lower-case letters, digits and '-', at most 63, starting {start}), got {value!r}"
        )
    return value


def check_dns_label(value: str) -> str:
    return _check_label(value, DNS_1123_LABEL, "DNS label", "and ending with a letter or digit")


def check_dns_1035_label(value: str) -> str:
    return _check_label(value, DNS_1035_LABEL, "DNS-1035 label", "with a letter")


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LatencyPoint(Contract):
    p50_ms: float = Field(gt=0)
    p90_ms: float = Field(gt=0)


class Profile(Contract):
    """What one model costs on one processor, measured or cited."""

    device_memory_mib: float = Field(ge=0)
    host_memory_mib: float = Field(ge=0)
    latency_ms: float = Field(gt=0, description="batch-1 p50")
    latency_p90_ms: Optional[float] = Field(default=None, gt=0, description="batch-1 p90")
    by_batch: Dict[str, LatencyPoint] = Field(default_factory=dict)
    threads: Optional[int] = Field(default=None, ge=1)
    source: Optional[ProfileSource] = None
    machine: Optional[str] = None
    citation: Optional[str] = None

    @model_validator(mode="after")
    def _p90_not_below_p50(self) -> Profile:
        if self.latency_p90_ms is not None and self.latency_p90_ms < self.latency_ms:
            raise ValueError(
                f"latency_p90_ms ({self.latency_p90_ms}) is below latency_ms ({self.latency_ms}): "
                "the p90 of a latency can never be below its p50"
            )
        return self

    @property
    def p90_ms(self) -> float:
        return self.latency_p90_ms if self.latency_p90_ms is not None else self.latency_ms


class ModelSpec(Contract):
    id: str
    source: Optional[str] = None
    task: Optional[Task] = None
    sequence_length: Optional[int] = Field(default=None, gt=0)
    batch_size: Optional[int] = Field(default=None, gt=0)
    precision: Precision = "fp32"
    rps: float = Field(ge=0)
    slo_p90_ms: Optional[float] = Field(default=None, gt=0)
    profiles: Dict[Processor, Profile] = Field(default_factory=dict)

    _id = field_validator("id")(check_dns_label)


class ModelCatalogue(Contract):
    models: List[ModelSpec]

    @model_validator(mode="after")
    def _unique_ids(self) -> ModelCatalogue:
        first: Dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.id in first:
                raise ValueError(
                    f"models[{i}].id {m.id!r} repeats models[{first[m.id]}].id: model ids must be unique"
                )
            first[m.id] = i
        return self


class ReferenceProfile(Profile):
    """A profile for a processor this machine cannot run, taken from a cited source."""

    shape: str = Field(description="model shape, e.g. bert-base-cased (the <config> of random:<config>@<seed>)")
    processor: Processor
    sequence_length: int = Field(gt=0)
    precision: Precision = "fp32"
    citation: str = Field(min_length=1)


class ReferenceProfiles(Contract):
    profiles: List[ReferenceProfile]

    @model_validator(mode="after")
    def _unique_keys(self) -> ReferenceProfiles:
        seen: Dict[tuple, int] = {}
        for i, p in enumerate(self.profiles):
            key = (p.shape, p.processor, p.sequence_length, p.precision)
            if key in seen:
                raise ValueError(f"profiles[{i}] repeats profiles[{seen[key]}] ({', '.join(map(str, key))})")
            seen[key] = i
        return self


class Resources(Contract):
    cpu_m: float = Field(default=0, ge=0)
    memory_mib: float = Field(default=0, ge=0)


class ServerBase(Resources):
    """The server process besides its models, and its own work per request."""

    request_cpu_ms: float = Field(
        default=0, ge=0,
        description="CPU time the server spends per request besides the model's forward (HTTP, JSON, tokenising); "
                    "on cpu pods it runs on the cores that serve the model, so the latency model adds it to the service time",
    )


class InstanceType(Contract):
    name: str
    processor: Processor
    price_per_hour: float = Field(gt=0)
    vcpu: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    devices: Optional[int] = Field(default=None, ge=1, description="GPUs or chips; cpu: derived from slices")
    device_memory_gib: Optional[float] = Field(default=None, gt=0)
    cores_per_device: Optional[int] = Field(default=None, ge=1)
    max_pods: int = Field(gt=0)

    @model_validator(mode="after")
    def _accelerators_are_described(self) -> InstanceType:
        if self.processor != "cpu":
            missing = [f for f in ("devices", "device_memory_gib") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"{self.processor} instance {self.name!r} needs {' and '.join(missing)}")
        return self


class InstanceCatalogue(Contract):
    instances: List[InstanceType] = Field(min_length=1)
    cpu_slice_vcpu: int = Field(default=2, ge=1)
    daemonset_overhead: Resources = Field(default_factory=Resources)
    server_base: ServerBase = Field(default_factory=ServerBase)
    platform: Dict[str, float] = Field(default_factory=dict)
    vm_memory_overhead: float = Field(
        default=0.075, ge=0, lt=1,
        description="share of nominal memory the kubelet does not report as capacity (Karpenter's default 7.5%)",
    )
    cpu_reserve_m: float = Field(default=0, ge=0, description="CPU per node kept for DaemonSets an organisation adds")

    @model_validator(mode="after")
    def _consistent(self) -> InstanceCatalogue:
        seen: Dict[str, int] = {}
        for i, t in enumerate(self.instances):
            if t.name in seen:
                raise ValueError(f"instances[{i}].name {t.name!r} repeats instances[{seen[t.name]}]")
            seen[t.name] = i
            if t.processor != "cpu":
                continue
            if t.vcpu < self.cpu_slice_vcpu:
                raise ValueError(
                    f"instances[{i}] ({t.name}): {t.vcpu} vCPU is less than one cpu slice "
                    f"(cpu_slice_vcpu {self.cpu_slice_vcpu})"
                )
            if t.cores_per_device not in (None, self.cpu_slice_vcpu):
                raise ValueError(
                    f"instances[{i}] ({t.name}): cores_per_device of a cpu slice is cpu_slice_vcpu "
                    f"({self.cpu_slice_vcpu}), got {t.cores_per_device}"
                )
        for item, price in self.platform.items():
            if price < 0:
                raise ValueError(f"platform.{item}: must be >= 0, got {price}")
        return self

    def by_name(self) -> Dict[str, InstanceType]:
        return {t.name: t for t in self.instances}


class Placement(Contract):
    instance_index: int = Field(ge=0)
    device_index: int = Field(ge=0)


class Accelerator(Contract):
    name: str
    count: int = Field(ge=1)


class Requests(Contract):
    cpu_m: int = Field(ge=0)
    memory_mib: int = Field(ge=0)
    accelerator: Optional[Accelerator] = None


class Predicted(Contract):
    utilisation: float = Field(ge=0)
    p90_ms: float = Field(ge=0)


class Server(Contract):
    id: str
    instance_type: str
    processor: Processor
    replicas: int = Field(ge=1)
    placements: List[Placement]
    models: List[str] = Field(min_length=1)
    requests: Requests
    memory_budget_mib: int = Field(ge=0)
    slo_p90_ms: Optional[float] = Field(default=None, gt=0, description="the strictest SLO among its models")
    utilisation_cap: Optional[float] = Field(
        default=None, gt=0, description="per-pod utilisation at which the predicted P90 reaches slo_p90_ms, "
                                        "never above --max-utilization")
    predicted: Predicted

    _id = field_validator("id")(check_dns_1035_label)

    @model_validator(mode="after")
    def _one_placement_per_replica(self) -> Server:
        if len(self.placements) != self.replicas:
            raise ValueError(
                f"server {self.id}: {self.replicas} replicas but {len(self.placements)} placements"
            )
        return self


class PreviousPlan(Contract):
    model_config = ConfigDict(extra="allow")
    digest: str
    models_moved: int = Field(ge=0)
    servers_restarted: int = Field(ge=0)


class Plan(Contract):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    inputs: Dict[str, str]
    options: Dict[str, Any]
    solver: Dict[str, Any]
    instances: Dict[str, int]
    cost_per_hour: float = Field(ge=0)
    platform_per_hour: float = Field(ge=0)
    lower_bound_per_hour: float = Field(ge=0)
    gap: float
    solve_seconds: float = Field(ge=0)
    created_at: str
    servers: List[Server]
    profile_sources: Dict[str, Dict[str, ProfileSource]]
    previous: Optional[PreviousPlan] = None

    @model_validator(mode="after")
    def _models_and_ids_unique(self) -> Plan:
        ids: Dict[str, int] = {}
        placed: Dict[str, str] = {}
        for i, s in enumerate(self.servers):
            if s.id in ids:
                raise ValueError(f"servers[{i}].id {s.id!r} repeats servers[{ids[s.id]}]")
            ids[s.id] = i
            for m in s.models:
                if m in placed:
                    raise ValueError(f"model {m!r} is on servers {placed[m]} and {s.id}: each model has one server")
                placed[m] = s.id
        return self

    def to_json_dict(self) -> Dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    if not SHA256_HEX.match(value):
        raise ValueError(f"must be a sha256 digest (64 lower-case hex digits), got {value!r}")
    return value


class ArtifactFile(Contract):
    sha256: str
    size: int = Field(ge=0)

    _sha = field_validator("sha256")(check_sha256)


class BundleManifest(Contract):
    """`artifacts/<sha256>/manifest.json`: what a traced bundle holds and how to call it.

    The bundle directory is named by the sha256 of `model_file`; `files` lists every other file of
    the bundle (the model file included, manifest.json itself excluded) so a reader can verify all."""

    schema_version: Literal[1] = Field(default=1, alias="schema")
    model_file: str = "model.pt"
    format: ArtifactFormat = Field(default="torchscript", description="how model_file is loaded (absent: torchscript)")
    files: Dict[str, ArtifactFile] = Field(min_length=1)
    processor: Processor
    task: Task
    source: str
    shape: str = Field(description="model shape, e.g. bert-base-cased")
    sequence_length: int = Field(gt=0)
    batch_size: int = Field(gt=0, description="the batch the artifact was traced at")
    precision: Precision = "fp32"
    inputs: Dict[str, List[int]] = Field(description="input name -> traced shape, e.g. input_ids: [1, 128]")
    outputs: Dict[str, List[int]] = Field(description="output name -> shape at the traced batch")
    labels: Optional[List[str]] = Field(default=None, description="sequence-classification label names")
    runtime: Dict[str, str] = Field(default_factory=dict, description="library versions that traced it")
    compiler_args: List[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _model_file_listed(self) -> BundleManifest:
        if self.model_file not in self.files:
            raise ValueError(f"model_file {self.model_file!r} is not among files")
        if self.format == "aoti" and self.processor not in ("cpu", "gpu"):
            raise ValueError(f"format aoti is for cpu and gpu; a {self.processor} bundle is torchscript (what torch-neuron "
                             "and torch-neuronx produce)")
        return self

    @property
    def digest(self) -> str:
        return self.files[self.model_file].sha256


class Check(Contract):
    """The traced artifact's outputs against the eager model's on fixed check inputs."""

    metric: Literal["cosine", "max_abs_diff"]
    value: float
    limit: float
    passed: bool


class StoreEntry(Contract):
    """`models/<model-id>/<processor>.json`: one model on one processor, published last."""

    schema_version: Literal[1] = Field(default=1, alias="schema")
    model_id: str
    processor: Processor
    artifact: str = Field(description="sha256 of the bundle's model file: artifacts/<artifact>/")
    task: Task
    source: str
    sequence_length: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    precision: Precision = "fp32"
    inputs: Dict[str, List[int]]
    outputs: Dict[str, List[int]]
    profile: Profile
    check: Optional[Check] = None
    created_at: str

    _id = field_validator("model_id")(check_dns_label)
    _artifact = field_validator("artifact")(check_sha256)

    def to_json_dict(self) -> Dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class RouteModel(Contract):
    server: str
    path: str


class RouteServer(Contract):
    url: str
    models: List[str]


class Routes(Contract):
    base_url: str
    models: Dict[str, RouteModel]
    servers: Dict[str, RouteServer]
