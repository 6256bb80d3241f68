"""The environment config (`config/<env>.yaml`): what differs between dev, staging and prod.

One model reads the whole file, for the charts and the stacks alike: the stacks import `EnvConfig`
(charts never import stacks), take the account, role, namespace, store, images and gateway from the
charts' own fields, and read only the `stacks:` block besides (`StacksConfig`; a key it leaves out
takes its default from stacks/defaults.py). `helm_values` builds the Helm values tree the servers'
templates read, in one place: `charts synth` writes it into values.yaml and the stacks pass it to each
release, so both name the same images.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts import Processor, check_dns_label

# Values that end up inside double-quoted YAML in the Helm templates: no quotes, backslashes,
# whitespace or template braces.
_PLAIN = re.compile(r"^[^\s\"'\\{}]+$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _plain(value: str) -> str:
    if not _PLAIN.match(value):
        raise ValueError(f"must have no spaces, quotes, backslashes or braces, got {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Image(_Section):
    repository: str = Field(description="e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/modelfleet-server-inf1")
    tag: str = Field(min_length=1, max_length=128)

    _checks = field_validator("repository", "tag")(_plain)

    @field_validator("tag")
    @classmethod
    def _not_latest(cls, value: str) -> str:
        if value == "latest":
            raise ValueError("must name a release, not 'latest' (a moving tag makes rollouts unreproducible)")
        return value


class Irsa(_Section):
    """The IAM role the server pods assume through the ServiceAccount (IAM roles for service accounts)."""

    role_name: str = Field(pattern=r"^[\w+=,.@-]{1,64}$")
    account: str = Field(pattern=r"^\d{12}$", description="12-digit AWS account id, quoted in YAML")
    partition: str = "aws"

    @property
    def role_arn(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/{self.role_name}"


class Replicas(_Section):
    hpa_max: int = Field(ge=1, description="most pods per server; the HPA's maximum (never below the plan's replicas)")
    cpu_target_percent: int = Field(default=70, ge=1, le=100, description="HPA target: average CPU utilisation of requests")


class Gateway(_Section):
    name: str = "modelfleet"
    class_name: str = "modelfleet-envoy"
    envoy_proxy_name: str = "modelfleet-proxy"
    host: str = Field(description="host name clients use; the listener and every HTTPRoute carry it")
    internal: bool = Field(default=True, description="internal NLB (default) or internet-facing")
    port: int = Field(default=80, ge=1, le=65535)

    _labels = field_validator("name", "class_name", "envoy_proxy_name")(check_dns_label)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _DNS_SUBDOMAIN.match(value):
            raise ValueError(f"must be a DNS name (lower-case labels separated by dots), got {value!r}")
        return value


class Startup(_Section):
    """How long a pod may take to load its models before the startup probe gives up:
    base_seconds + seconds_per_model * models + memory_budget_mib / load_mib_per_second."""

    base_seconds: int = Field(default=120, ge=0)
    seconds_per_model: float = Field(default=2.0, ge=0)
    load_mib_per_second: float = Field(default=50.0, gt=0)
    period_seconds: int = Field(default=10, ge=1)


class Autoscaling(_Section):
    """What scales each server out (charts/autoscaling.py): KEDA on its requests in flight, read from
    Prometheus, or the HorizontalPodAutoscaler on CPU. KEDA needs the KEDA operator and Prometheus
    (kube-prometheus-stack in `monitoring_namespace`) in the cluster."""

    accelerator: Literal["keda", "hpa"] = Field(
        default="keda", description="gpu/inf1/inf2 servers: keda (a ScaledObject on requests in flight per pod) or "
                                    "hpa (CPU, which barely moves with device load: it never scales them out)")
    cpu: Literal["hpa", "keda"] = Field(
        default="hpa", description="cpu servers: hpa (CPU utilisation, which is their inference load) or keda")


# The retention periods CloudWatch Logs accepts (PutRetentionPolicy's retentionInDays); anything else is
# refused by the API at deploy time, so it is refused here, when the file is read.
CLOUDWATCH_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                             2922, 3288, 3653)


class Observability(_Section):
    """What the stacks install to watch the cluster (stacks/observability.py); the charts carry it unread."""

    amp: bool = Field(default=False, description="also remote-write Prometheus to an Amazon Managed Service for "
                                                 "Prometheus workspace that the stacks create (SigV4, IRSA role)")
    log_retention_days: int = Field(default=30, description="days CloudWatch Logs keeps the containers' logs (Fluent "
                                                            "Bit's log group); one of CloudWatch's retention periods")

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in CLOUDWATCH_RETENTION_DAYS:
            raise ValueError(f"{value} is not a CloudWatch Logs retention period; use one of "
                             f"{', '.join(map(str, CLOUDWATCH_RETENTION_DAYS))}")
        return value


_ROLE_ARN = r"^arn:aws[-a-z]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]+$"
_ECR_URI = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/(?P<name>[a-z0-9._/-]+)$")


class Access(_Section):
    """IAM roles given EKS access entries (the cluster's endpoint is private by default: see the README)."""

    admin_role_arn: Optional[str] = Field(default=None, pattern=_ROLE_ARN,
                                          description="gets AmazonEKSClusterAdminPolicy, cluster-wide")
    read_only_role_arn: Optional[str] = Field(default=None, pattern=_ROLE_ARN,
                                              description="gets AmazonEKSAdminViewPolicy, cluster-wide")


class StacksConfig(_Section):
    """What only the CDK stacks read. Every key may be left out: stacks/defaults.py has its default
    (per environment, then common), so None here means "the default"."""

    region: Optional[str] = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    plan: Optional[str] = Field(default=None, description="the reviewed plan the node groups are sized from, e.g. plans/dev.json")
    allowed_instance_families: Optional[List[str]] = None
    burst_factor: Optional[float] = Field(default=None, ge=1, description="node group max = ceil(count x burst_factor)")
    endpoint_cidrs: Optional[List[str]] = Field(default=None, description="public API endpoint only from these; none: private")
    max_azs: Optional[int] = Field(default=None, ge=2, le=3)
    nat_gateways: Optional[int] = Field(default=None, ge=1, le=3)
    vpc_cidr: Optional[str] = None
    system_instance_type: Optional[str] = None
    system_nodes: Optional[int] = Field(default=None, ge=1)
    system_max_nodes: Optional[int] = Field(default=None, ge=1)
    certificate_arn: Optional[str] = Field(default=None, description="ACM certificate: TLS at an internet-facing NLB")
    source_cidrs: Optional[List[str]] = Field(default=None, description="client allowlist of an internet-facing NLB")
    smoke_test: Optional[bool] = None
    smoke_image: Optional[str] = None
    smoke_timeout_minutes: Optional[int] = Field(default=None, ge=1)
    log_retention_days: Optional[int] = Field(default=None, ge=1)
    access: Access = Field(default_factory=Access)


class EnvConfig(_Section):
    environment: str
    namespace: str
    images: Dict[Processor, Image] = Field(description="image per processor; every processor the plan uses needs one")
    store_uri: str = Field(description="s3://bucket/prefix (or file:// for a local cluster)")
    irsa: Irsa
    replicas: Replicas
    gateway: Gateway
    monitoring_namespace: str = Field(default="monitoring", description="namespace whose pods may scrape /metrics")
    min_replicas: int = Field(
        default=1, ge=1,
        description="plans for this environment must be made with at least this --min-replicas (prod: 2)")
    startup: Startup = Field(default_factory=Startup)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling,
                                     description="per kind of processor: keda (requests in flight) or hpa (CPU)")
    observability: Observability = Field(
        default_factory=Observability,
        description="monitoring and logging the stacks install: amp (Amazon Managed Prometheus), log_retention_days")
    stacks: StacksConfig = Field(
        default_factory=StacksConfig,
        description="settings only the CDK stacks read (region, plan, allowed_instance_families, burst_factor, "
                    "...; stacks/defaults.py has every default): the charts carry them through unread")

    _labels = field_validator("environment", "namespace", "monitoring_namespace")(check_dns_label)
    _store = field_validator("store_uri")(_plain)

    @field_validator("store_uri")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("s3://", "file://")):
            raise ValueError(f"must be s3://bucket/prefix or file://DIR, got {value!r}")
        return value

    @model_validator(mode="after")
    def _namespaces(self) -> EnvConfig:
        if self.namespace in ("default", "kube-system", "kube-public"):
            raise ValueError(f"namespace: {self.namespace!r} is shared with the cluster; give modelfleet its own")
        return self


def ecr_parts(repository: str) -> Optional[Dict[str, str]]:
    """{account, region, name} of an ECR repository URI, None for any other registry."""
    m = _ECR_URI.match(repository)
    return m.groupdict() if m else None


def helm_values(config: EnvConfig) -> Dict[str, Any]:
    """The values tree the servers' templates read: values.yaml holds it (charts synth), and the stacks
    pass the very same tree to every release, so dist/manifests/ and the cluster name the same images."""
    return {
        "images": {p: {"repository": i.repository, "tag": i.tag} for p, i in sorted(config.images.items())},
        "storeUri": config.store_uri,
        "roleArn": config.irsa.role_arn,
    }
