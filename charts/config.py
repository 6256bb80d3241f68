"""The environment config (`config/<env>.yaml`): what differs between dev, staging and prod."""
from __future__ import annotations

import re
from typing import Any, Dict

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
    stacks: Dict[str, Any] = Field(
        default_factory=dict,
        description="settings only the CDK stacks read (account, region, plan, allowed_instance_families, burst_factor, "
                    "...; every key of stacks/defaults.py): the charts carry them through unread")

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
