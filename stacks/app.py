"""The CDK app: `-c env=dev|staging|prod` (default dev), `-c plan=PATH` (default: the environment's
`plan:`; `-c plan.<env>=PATH` for any environment, pipeline stages included), `-c tag=TAG` (image
tag, the pipeline's commit), `-c dist=PATH` (a `charts synth` output for that plan and environment;
default: made here, in a process of its own, and cached under .cdk-dist/<env>/ or `-c dist_cache=DIR`),
`-c overrides.<env>='{"endpoint_cidrs": [...]}'` (any key of stacks/defaults.py over the files),
`-c pipeline=false` (skip the pipeline stack), `-c nag=false` (skip cdk-nag), `-c pipeline.<key>=...`
(pipeline settings of stacks/defaults.py PIPELINE).

Stacks: `modelfleet-<env>-{network,data,cluster,serving,smoke}` for the chosen environment,
`modelfleet-shared` (ECR) and `modelfleet-pipeline` (whose stages hold every environment's stacks,
each from its own config and plan). Synth needs no AWS credentials: accounts and regions are explicit
and the availability zones come from cdk.context.json, which this module loads into the App's context
so that a plain `python app.py` sees them too.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import yaml  # noqa: E402
from aws_cdk import App, Validations  # noqa: E402

from stacks import defaults  # noqa: E402
from stacks.settings import REPO_ROOT, EnvSettings, SettingsError, as_list, load_env, load_plan, pipeline_settings  # noqa: E402

DIST_CACHE = ".cdk-dist"


def _truthy(value: Any, default: bool = True) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


def file_context() -> Dict[str, Any]:
    """cdk.json's `context` and cdk.context.json (the AZs), as the CLI would give them."""
    ctx: Dict[str, Any] = {}
    cdk_json = REPO_ROOT / "cdk.json"
    if cdk_json.exists():
        ctx.update(json.loads(cdk_json.read_text()).get("context", {}))
    cached = REPO_ROOT / "cdk.context.json"
    if cached.exists():
        ctx.update(json.loads(cached.read_text()))
    return ctx


@dataclass
class EnvInputs:
    settings: EnvSettings
    plan: Any
    dist: Path
    cluster_objects: List[dict]
    gateway_host: str


def ensure_dist(settings: EnvSettings, dist: Optional[str], *, cache_dir: Optional[str] = None) -> Path:
    """A `charts synth` output for this environment's plan and config: the given one (checked), or one
    made (and cached, keyed by the inputs' digests) under .cdk-dist/<env>/."""
    plan_sha = hashlib.sha256(settings.plan_path.read_bytes()).hexdigest()
    if dist:
        path = Path(dist)
        path = path if path.is_absolute() else REPO_ROOT / path
        summary = path / "summary.json"
        if summary.exists():
            info = json.loads(summary.read_text())
            if info.get("plan_sha256") not in (None, plan_sha):
                raise SettingsError(f"{path} was made from another plan than {settings.plan_path} "
                                    f"(plan_sha256 {info.get('plan_sha256')[:12]}, not {plan_sha[:12]}): "
                                    "run `python -m charts synth` again")
            if info.get("environment") not in (None, settings.env):
                raise SettingsError(f"{path} was made for environment {info.get('environment')}, not {settings.env}")
        return path
    if settings.config_path is None:
        raise SettingsError(f"config/{settings.env}.yaml is missing: the charts need it to render the servers")
    config_sha = hashlib.sha256(settings.config_path.read_bytes()).hexdigest()
    key = f"{plan_sha}\n{config_sha}\n"
    cache = Path(cache_dir) if cache_dir else REPO_ROOT / DIST_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / settings.env
    stamp = cache / f"{settings.env}.inputs"
    if not (out.is_dir() and stamp.exists() and stamp.read_text() == key):
        # A process of its own: cdk8s and its jsii kernel stay out of this one (memory, start-up).
        command = [sys.executable, "-m", "charts", "synth", "--plan", str(settings.plan_path),
                   "--config", str(settings.config_path), "--out", str(out), "--quiet",
                   "--instances", str(REPO_ROOT / "config" / "instances.yaml")]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SettingsError(f"`{' '.join(command[1:])}` failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        stamp.write_text(key)
    return out


def _docs(path: Path) -> List[dict]:
    if not path.is_file():
        raise SettingsError(f"{path} is missing: is it a `python -m charts synth` output?")
    return [d for d in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def role_arn(settings: EnvSettings) -> str:
    return f"arn:aws:iam::{settings.account}:role/{settings.serving_role_name}"


def env_inputs(settings: EnvSettings, dist: Optional[str], cache_dir: Optional[str] = None) -> EnvInputs:
    """Plan, charts output, and the cluster-wide objects (rendered by the charts with the config's
    values: the only value in them is the role ARN, which the stacks create under that very name)."""
    plan = load_plan(settings)
    path = ensure_dist(settings, dist, cache_dir=cache_dir)
    cluster = _docs(path / "manifests" / "00-cluster.yaml")
    envoy = _docs(path / "envoy-gateway" / "envoyproxy.yaml")
    expected = role_arn(settings)
    for doc in cluster:
        arn = (doc.get("metadata", {}).get("annotations") or {}).get("eks.amazonaws.com/role-arn")
        if arn is not None and arn != expected:
            raise SettingsError(f"{path}: ServiceAccount {doc['metadata'].get('name')} names role {arn}, but the "
                                f"stacks create {expected} (account/role name of config/{settings.env}.yaml)")
    host = _gateway_host(settings, cluster)
    return EnvInputs(settings=settings, plan=plan, dist=path, cluster_objects=cluster + envoy, gateway_host=host)


def _gateway_host(settings: EnvSettings, cluster: List[dict]) -> str:
    for doc in cluster:
        if doc.get("kind") == "Gateway" and doc.get("metadata", {}).get("name") == settings.gateway_name:
            for listener in doc.get("spec", {}).get("listeners", []):
                if listener.get("hostname"):
                    return str(listener["hostname"])
    raw = settings.raw.get("gateway", {}) if isinstance(settings.raw.get("gateway"), dict) else {}
    return str(raw.get("host", "*"))


def build_app(context: Optional[Mapping[str, Any]] = None, outdir: Optional[str] = None) -> App:
    """The whole app. `context` stands in for -c flags (tests); the CLI's flags arrive through the
    environment and win over cdk.json, as usual."""
    from stacks.nag import apply_acknowledgements, nag_pack
    from stacks.pipeline import PipelineStack
    from stacks.platform import PlatformStage, Registry, build_platform, build_shared

    app = App(context={**file_context(), **dict(context or {})}, outdir=outdir)
    ctx = app.node.try_get_context
    env = ctx("env") or "dev"
    tag = ctx("tag")
    pipe = pipeline_settings({k: ctx(f"pipeline.{k}") for k in defaults.PIPELINE})
    registry = Registry(account=str(pipe["registry_account"]), region=str(pipe["region"]))

    def settings_for(name: str) -> EnvSettings:
        plan = ctx(f"plan.{name}") or (ctx("plan") if name == env else None)
        overrides = ctx(f"overrides.{name}")
        if isinstance(overrides, str):
            overrides = json.loads(overrides)
        return load_env(name, plan=plan, overrides=overrides)

    cache: Dict[str, EnvInputs] = {}

    dist_cache = ctx("dist_cache")
    dists = {name: ctx(f"dist.{name}") or (ctx("dist") if name == env else None) for name in defaults.ENVIRONMENTS}

    def inputs(settings: EnvSettings) -> EnvInputs:
        if settings.env not in cache:
            cache[settings.env] = env_inputs(settings, dists[settings.env], dist_cache)
        return cache[settings.env]

    def build(scope: Any, settings: EnvSettings, *, top_level: bool):
        i = inputs(settings)
        return build_platform(scope, settings, i.plan, dist=i.dist, cluster_objects=i.cluster_objects,
                              gateway_host=i.gateway_host, registry=registry, tag=tag,
                              top_level=top_level)

    chosen = settings_for(env)
    stage_names = as_list(pipe["stages"])
    stage_settings = [settings_for(name) for name in stage_names] if _truthy(ctx("pipeline")) else []
    # The charts of every environment (each `charts synth` is a process of its own), two at a time.
    todo = {s.env: s for s in [chosen, *stage_settings]}
    with ThreadPoolExecutor(max_workers=min(2, len(todo))) as pool:  # two at a time: memory
        for name, done in zip(todo, pool.map(inputs, todo.values())):
            cache[name] = done
    build(app, chosen, top_level=True)
    pull_accounts = sorted({chosen.account, *(s.account for s in stage_settings)})
    build_shared(app, registry=registry, repositories=chosen.repositories, pull_accounts=pull_accounts)
    if stage_settings:
        PipelineStack(app, "modelfleet-pipeline", pipeline=pipe, registry=registry, repositories=chosen.repositories,
                      stages=[(s, lambda scope, sid, s=s: PlatformStage(scope, sid, settings=s, build=build))
                              for s in stage_settings])
    if _truthy(ctx("nag")):
        variables = [{"env": s.env, "account": s.account, "region": s.region,
                      "bucket": s.bucket_name or f"{s.prefix()}-{s.account}",
                      "pipeline_account": registry.account} for s in [chosen, *stage_settings]]
        apply_acknowledgements(app, variables)
        Validations.of(app).add_plugins(nag_pack(app))
    return app
