"""One environment's settings: `config/<env>.yaml` (the charts' file) over `stacks/defaults.py`.

The charts own `config/<env>.yaml`; the stacks read it and fall back on `stacks/defaults.py` for
every key it does not have, so a missing key is never an error unless the value is needed and has no
sane default (an internet-facing gateway without a certificate, say).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from contracts.loading import load
from contracts.models import Plan
from stacks import defaults

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting is missing or wrong: the message names the file and the key."""


def _lookup(data: Mapping[str, Any], *keys: str) -> Any:
    """The first of `keys` present in `data`; a key may be dotted (`gateway.name`)."""
    for key in keys:
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


@dataclass(frozen=True)
class EnvSettings:
    env: str
    account: str
    region: str
    plan_path: Path
    namespace: str
    allowed_instance_families: Tuple[str, ...]
    burst_factor: float
    endpoint_cidrs: Tuple[str, ...]
    max_azs: int
    nat_gateways: int
    vpc_cidr: str
    system_instance_type: str
    system_nodes: int
    system_max_nodes: int
    serving_role_name: str
    service_account: str
    store_prefix: str
    bucket_name: Optional[str]
    repositories: Dict[str, str]
    image_tags: Dict[str, str]
    gateway_name: str
    gateway_port: int
    internet_facing: bool
    certificate_arn: Optional[str]
    source_cidrs: Tuple[str, ...]
    image_tag: str
    smoke_test: bool
    smoke_image: Optional[str]
    smoke_timeout_minutes: int
    log_retention_days: int
    config_path: Optional[Path] = None
    raw: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def prefix(self) -> str:
        return f"modelfleet-{self.env}"

    def tag_for(self, processor: str, override: Optional[str] = None) -> str:
        """The image tag: -c tag=<commit> (the pipeline) over the config's per-processor tag."""
        return override or self.image_tags.get(processor) or self.image_tag


def read_env_file(env: str, config_dir: Path) -> Tuple[Dict[str, Any], Optional[Path]]:
    path = config_dir / f"{env}.yaml"
    if not path.exists():
        return {}, None
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    return data, path


def load_env(env: str, *, config_dir: Optional[Path] = None, plan: Optional[str] = None,
             overrides: Optional[Mapping[str, Any]] = None) -> EnvSettings:
    """Settings of `env`; `plan` (the `-c plan=` context) and `overrides` win over the files."""
    if env not in defaults.ENVIRONMENTS:
        raise SettingsError(f"unknown environment {env!r}: expected one of {', '.join(defaults.ENVIRONMENTS)}")
    config_dir = config_dir or REPO_ROOT / "config"
    data, path = read_env_file(env, config_dir)
    base = {**defaults.COMMON, **defaults.ENVIRONMENTS[env]}
    label = str(path) if path else f"config/{env}.yaml (absent)"

    def get(key: str, *aliases: str) -> Any:
        if overrides and key in overrides:
            return overrides[key]
        value = _lookup(data, f"stacks.{key}", key, *aliases)
        return base.get(key) if value is None else value

    internet_facing = bool(get("internet_facing", "gateway.internet_facing", "gateway.internetFacing"))
    internal = _lookup(data, "gateway.internal", "internal_nlb", "gateway.internal_nlb", "nlb.internal")
    if internal is not None and not (overrides and "internet_facing" in overrides):
        internet_facing = not bool(internal)
    certificate_arn = get("certificate_arn", "gateway.certificate_arn", "gateway.certificateArn")
    source_cidrs = tuple(get("source_cidrs", "gateway.source_cidrs", "gateway.sourceCidrs") or ())
    if internet_facing and not certificate_arn:
        raise SettingsError(f"{label}: internet_facing needs certificate_arn (an ACM certificate for TLS at the NLB)")
    if internet_facing and not source_cidrs:
        raise SettingsError(f"{label}: internet_facing needs source_cidrs (the allowlist of client CIDRs)")

    plan_value = plan or get("plan")
    plan_path = Path(plan_value)
    if not plan_path.is_absolute():
        plan_path = REPO_ROOT / plan_path
    account = str(get("account", "irsa.account"))
    role_name = str(get("serving_role_name", "irsa.role_name"))
    store_uri = _lookup(data, "store_uri")
    bucket_name, store_prefix = None, str(get("store_prefix"))
    if isinstance(store_uri, str) and store_uri.startswith("s3://"):
        bucket_name, _, prefix = store_uri[len("s3://"):].partition("/")
        store_prefix = prefix or store_prefix
    images = _lookup(data, "images") or {}
    repositories = dict(defaults.IMAGE_REPOSITORIES)
    tags: Dict[str, str] = {}
    for processor, image in images.items() if isinstance(images, Mapping) else ():
        if isinstance(image, Mapping) and image.get("repository"):
            repositories[processor] = str(image["repository"]).rsplit("/", 1)[-1]
        if isinstance(image, Mapping) and image.get("tag"):
            tags[processor] = str(image["tag"])
    burst = float(get("burst_factor"))
    if burst < 1:
        raise SettingsError(f"{label}: burst_factor must be >= 1, got {burst}")
    return EnvSettings(
        env=env,
        account=account,
        region=str(get("region", "aws.region")),
        plan_path=plan_path,
        namespace=str(get("namespace")),
        allowed_instance_families=tuple(get("allowed_instance_families")),
        burst_factor=burst,
        endpoint_cidrs=tuple(get("endpoint_cidrs")),
        max_azs=int(get("max_azs")),
        nat_gateways=int(get("nat_gateways")),
        vpc_cidr=str(get("vpc_cidr")),
        system_instance_type=str(get("system_instance_type")),
        system_nodes=int(get("system_nodes")),
        system_max_nodes=int(get("system_max_nodes")),
        serving_role_name=role_name.format(env=env),
        service_account=str(get("service_account", "serviceAccount", "service_account_name")),
        store_prefix=store_prefix.strip("/"),
        bucket_name=bucket_name,
        repositories=repositories,
        image_tags=tags,
        gateway_name=str(get("gateway_name", "gateway.name")),
        internet_facing=internet_facing,
        certificate_arn=certificate_arn,
        source_cidrs=source_cidrs,
        image_tag=str(get("image_tag")),
        gateway_port=int(get("gateway_port", "gateway.port")),
        smoke_test=bool(get("smoke_test")),
        smoke_image=get("smoke_image"),
        smoke_timeout_minutes=int(get("smoke_timeout_minutes")),
        log_retention_days=int(get("log_retention_days")),
        config_path=path,
        raw=data,
    )


def load_plan(settings: EnvSettings) -> Plan:
    if not settings.plan_path.exists():
        raise SettingsError(
            f"plan {settings.plan_path} does not exist (environment {settings.env}): write one with "
            "`python -m packing plan ... --out PATH` (or `make demo`), then pass -c plan=PATH or set "
            f"`plan:` in config/{settings.env}.yaml"
        )
    return load(Plan, settings.plan_path)


def max_size(count: int, burst_factor: float) -> int:
    return max(count, math.ceil(count * burst_factor - 1e-9))


def pipeline_settings(overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    settings = dict(defaults.PIPELINE)
    if overrides:
        settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def as_list(value: Any) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]
