"""One environment's settings: `config/<env>.yaml`, read by the charts' own model, over `stacks/defaults.py`.

The file is parsed once, by `charts.config.EnvConfig` (the same model `charts synth` uses, so a key one
accepts the other cannot reject). The stacks take the account, role, namespace, store, images and
gateway from the charts' fields and everything else from the `stacks:` block, whose absent keys take
their defaults from stacks/defaults.py (per environment, then common).

`-c overrides.<env>=JSON` (a partial document, merged key by key over the file) and `-c tag=TAG` (every
image's tag) give the *effective* document: the stacks deploy it and hand the very same document to
`charts synth`, so dist/manifests/ names the images the cluster runs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from charts.config import EnvConfig, ecr_parts
from charts.constants import SERVICE_ACCOUNT
from contracts.loading import ContractError, load, parse, read_data
from contracts.models import Plan
from stacks import defaults

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting is missing or wrong: the message names the file and the key."""


@dataclass(frozen=True)
class EnvSettings:
    env: str
    config: EnvConfig  # the effective document, validated
    document: Dict[str, Any] = field(compare=False, repr=False)  # the same, as plain data (for charts synth)
    config_path: Path
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
    bucket_name: str
    store_prefix: str
    gateway_name: str
    gateway_port: int
    internet_facing: bool
    certificate_arn: Optional[str]
    source_cidrs: Tuple[str, ...]
    smoke_test: bool
    smoke_image: Optional[str]
    smoke_timeout_minutes: int
    log_retention_days: int
    admin_role_arn: Optional[str]
    read_only_role_arn: Optional[str]

    def prefix(self) -> str:
        return f"modelfleet-{self.env}"

    @property
    def repositories(self) -> Dict[str, str]:
        """ECR repository name per processor (the last part of images.<processor>.repository)."""
        return {p: str((ecr_parts(i.repository) or {"name": i.repository.rsplit("/", 1)[-1]})["name"])
                for p, i in sorted(self.config.images.items())}

    def image(self, processor: str) -> str:
        i = self.config.images[processor]
        return f"{i.repository}:{i.tag}"


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """`over` merged key by key into a copy of `base` (mappings recursively; anything else replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_path_for(env: str, config_dir: Optional[Path] = None) -> Path:
    return (config_dir or REPO_ROOT / "config") / f"{env}.yaml"


def plan_path_for(env: str, *, config_dir: Optional[Path] = None, plan: Optional[str] = None) -> Path:
    """Where `env`'s plan is: `plan` (the -c plan= context) or the config's stacks.plan or the default;
    relative paths are from the repository's root. Reads only the file's `stacks.plan`."""
    value = plan
    if value is None:
        path = config_path_for(env, config_dir)
        data = read_data(path) if path.is_file() else {}
        value = ((data or {}).get("stacks") or {}).get("plan") if isinstance(data, dict) else None
    value = value or {**defaults.COMMON, **defaults.ENVIRONMENTS.get(env, {})}["plan"]
    p = Path(str(value).replace("{env}", env))
    return p if p.is_absolute() else REPO_ROOT / p


def load_env(env: str, *, config_dir: Optional[Path] = None, plan: Optional[str] = None,
             overrides: Optional[Mapping[str, Any]] = None, tag: Optional[str] = None) -> EnvSettings:
    """Settings of `env`: its config file, `overrides` merged over it, every image tagged `tag` if given;
    `plan` (the `-c plan=` context) wins over `stacks.plan`."""
    if env not in defaults.ENVIRONMENTS:
        raise SettingsError(f"unknown environment {env!r}: expected one of {', '.join(defaults.ENVIRONMENTS)}")
    path = config_path_for(env, config_dir)
    if not path.is_file():
        raise SettingsError(f"{path} does not exist: every environment needs its config (see config/dev.yaml)")
    try:
        data = read_data(path)
    except ContractError as exc:
        raise SettingsError(str(exc)) from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    if overrides:
        data = merge(data, overrides)
    if tag:
        data = merge(data, {"images": {p: {"tag": tag} for p in (data.get("images") or {})}})
    label = f"{path}" + (" with -c overrides/tag" if overrides or tag else "")
    try:
        config = parse(EnvConfig, data, label)
    except ContractError as exc:
        raise SettingsError(str(exc)) from None
    if config.environment != env:
        raise SettingsError(f"{path}: environment is {config.environment!r}, but the file is {env}'s")

    base = {**defaults.COMMON, **defaults.ENVIRONMENTS[env]}
    stacks = config.stacks

    def get(key: str) -> Any:
        value = getattr(stacks, key)
        return base[key] if value is None else value

    if not config.store_uri.startswith("s3://"):
        raise SettingsError(f"{label}: store_uri must be s3://bucket/prefix for a cluster, got {config.store_uri!r}")
    bucket, _, prefix = config.store_uri[len("s3://"):].partition("/")
    internet_facing = not config.gateway.internal
    certificate_arn, source_cidrs = get("certificate_arn"), tuple(get("source_cidrs"))
    if internet_facing and not certificate_arn:
        raise SettingsError(f"{label}: gateway.internal is false, which needs stacks.certificate_arn "
                            "(an ACM certificate for TLS at the NLB)")
    if internet_facing and not source_cidrs:
        raise SettingsError(f"{label}: gateway.internal is false, which needs stacks.source_cidrs "
                            "(the allowlist of client CIDRs)")
    region = str(get("region"))
    for processor, image in sorted(config.images.items()):
        parts = ecr_parts(image.repository)
        if parts is None or parts["region"] != region:
            raise SettingsError(f"{label}: images.{processor}.repository must be an ECR repository in {region} "
                                f"(<account>.dkr.ecr.{region}.amazonaws.com/<name>), got {image.repository!r}")
    plan_path = plan_path_for(env, config_dir=config_dir, plan=plan or stacks.plan)
    # The document charts synth renders carries the stacks block with its defaults resolved, so the charts
    # cap HPAs with the very burst factor the node groups are sized with.
    document = config.model_dump(mode="json")
    document["stacks"].update({k: get(k) for k in document["stacks"] if k not in ("plan", "access")})
    return EnvSettings(
        env=env, config=config, document=document, config_path=path,
        account=config.irsa.account,
        region=region,
        plan_path=plan_path,
        namespace=config.namespace,
        allowed_instance_families=tuple(get("allowed_instance_families")),
        burst_factor=float(get("burst_factor")),
        endpoint_cidrs=tuple(get("endpoint_cidrs")),
        max_azs=int(get("max_azs")),
        nat_gateways=int(get("nat_gateways")),
        vpc_cidr=str(get("vpc_cidr")),
        system_instance_type=str(get("system_instance_type")),
        system_nodes=int(get("system_nodes")),
        system_max_nodes=int(get("system_max_nodes")),
        serving_role_name=config.irsa.role_name,
        service_account=SERVICE_ACCOUNT,
        bucket_name=bucket,
        store_prefix=(prefix or "").strip("/"),
        gateway_name=config.gateway.name,
        gateway_port=config.gateway.port,
        internet_facing=internet_facing,
        certificate_arn=certificate_arn,
        source_cidrs=source_cidrs,
        smoke_test=bool(get("smoke_test")),
        smoke_image=get("smoke_image"),
        smoke_timeout_minutes=int(get("smoke_timeout_minutes")),
        log_retention_days=int(get("log_retention_days")),
        admin_role_arn=stacks.access.admin_role_arn,
        read_only_role_arn=stacks.access.read_only_role_arn,
    )


def load_plan(settings: EnvSettings) -> Plan:
    if not settings.plan_path.exists():
        raise SettingsError(
            f"plan {settings.plan_path} does not exist (environment {settings.env}): the reviewed plans are "
            "plans/<env>.json (plans/README.md says how they are made); pass -c plan=PATH or set "
            f"`stacks.plan:` in config/{settings.env}.yaml"
        )
    return load(Plan, settings.plan_path)


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

