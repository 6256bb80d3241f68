"""The CDK app: `-c env=dev|staging|prod` (default dev), `-c plan=PATH` (default: the environment's
`stacks.plan`, plans/<env>.json; `-c plan.<env>=PATH` for any environment, pipeline stages included),
`-c tag=TAG` (every image's tag, the pipeline's commit), `-c dist=PATH` (a `charts synth` output for
that plan and environment; default: made here, in a process of its own, from the effective config,
and cached under .cdk-dist/<env>/ or `-c dist_cache=DIR`, made again when the plan, the config or the
charts code changes), `-c overrides.<env>='{"stacks":
{"endpoint_cidrs": [...]}}'` (a partial config/<env>.yaml merged over the file), `-c pipeline=...`,
`-c nag=false` (skip cdk-nag), `-c pipeline.<key>=...` (pipeline settings of stacks/defaults.py
PIPELINE).

Stacks: `modelfleet-<env>-{network,data,cluster,nodes,serving,smoke}` for the chosen environment,
`modelfleet-shared` (ECR) and `modelfleet-pipeline` (whose stages hold every environment's stacks,
each from its own config and plan). The pipeline stack needs every stage's plan: `-c pipeline=true`
requires it (the pipeline's own build passes it), `-c pipeline=false` leaves the pipeline out, and by
default it is built when every stage's plan exists and left out, with a message naming the missing
plans, when not, so `cdk synth -c env=dev -c plan=PLAN` never needs another stage's plan.

Synth needs no AWS credentials: accounts and regions are explicit and the availability zones come
from cdk.context.json, which this module loads into the App's context so that a plain
`python app.py` sees them too.
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

from charts.config import ecr_parts, helm_values  # noqa: E402
from contracts.loading import write_atomic  # noqa: E402
from stacks import defaults  # noqa: E402
from stacks.dist_cache import INSTANCES_FILE, dist_inputs  # noqa: E402
from stacks.settings import (  # noqa: E402
    REPO_ROOT,
    EnvSettings,
    SettingsError,
    as_list,
    load_env,
    load_plan,
    pipeline_settings,
    plan_path_for,
)

DIST_CACHE = ".cdk-dist"


def _truthy(value: Any, default: bool = True) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


def pipeline_mode(value: Any) -> str:
    """`-c pipeline=`: "auto" (absent), "on" (true/yes/1/on) or "off" (false/no/0/off)."""
    if value is None or str(value).strip().lower() in ("", "auto"):
        return "auto"
    return "on" if _truthy(value) else "off"


def missing_plans(plans: Mapping[str, Path]) -> Dict[str, Path]:
    return {env: path for env, path in plans.items() if not path.is_file()}


def check_registry(settings: EnvSettings, account: str, region: str, repositories: Mapping[str, str]) -> None:
    """The config's images are the one source of image URIs: they must be in the shared registry that
    the stacks create (and the pipeline pushes to), under the same repository names in every stage."""
    for processor, image in sorted(settings.config.images.items()):
        parts = ecr_parts(image.repository) or {}
        if (parts.get("account"), parts.get("region")) != (account, region):
            raise SettingsError(f"{settings.config_path}: images.{processor}.repository is {image.repository}, but the "
                                f"shared registry is {account}.dkr.ecr.{region}.amazonaws.com (pipeline.registry_account, "
                                "pipeline.region): the stacks create the repositories there and the pipeline pushes there")
    if dict(settings.repositories) != dict(repositories):
        raise SettingsError(f"{settings.config_path}: image repositories {settings.repositories} differ from "
                            f"{dict(repositories)}: every stage pulls from the same shared repositories")


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


def _dist_images(path: Path) -> Optional[Dict[str, Any]]:
    """The image values a `charts synth` output was written with (its first server shard's values.yaml)."""
    for values in sorted((path / "helm").glob("servers-*/values.yaml")):
        return (yaml.safe_load(values.read_text()) or {}).get("images")
    return None


def ensure_dist(settings: EnvSettings, dist: Optional[str], *, cache_dir: Optional[str] = None) -> Path:
    """A `charts synth` output for this environment's plan and effective config: the given one (checked:
    same plan, environment and images), or one made from the effective config (written beside it) and
    cached under .cdk-dist/<env>/, keyed by the digests of the plan, the config and the code that writes it
    (stacks.dist_cache: an edit to charts/ or contracts/ makes a new one)."""
    plan = settings.plan_path.read_bytes()
    plan_sha = hashlib.sha256(plan).hexdigest()
    images = helm_values(settings.config)["images"]
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
        made_with = _dist_images(path)
        if made_with is not None and made_with != images:
            raise SettingsError(f"{path} names other images than the stacks deploy ({made_with} vs {images}): run "
                                "`python -m charts synth` with the same config (and tag), or leave -c dist out")
        return path
    text = yaml.safe_dump(settings.document, sort_keys=False)
    try:
        key = dist_inputs(REPO_ROOT, plan, text).key
    except FileNotFoundError as exc:
        raise SettingsError(str(exc)) from None
    cache = Path(cache_dir) if cache_dir else REPO_ROOT / DIST_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / settings.env
    stamp = cache / f"{settings.env}.inputs"
    if not (out.is_dir() and stamp.exists() and stamp.read_text() == key):
        # The effective config (file, overrides, tag) is what charts synth renders: the same document the
        # stacks deploy, so dist/manifests/ names the same images.
        config = write_atomic(cache / f"{settings.env}.config.yaml", text)
        # A process of its own: cdk8s and its jsii kernel stay out of this one (memory, start-up).
        command = [sys.executable, "-m", "charts", "synth", "--plan", str(settings.plan_path),
                   "--config", str(config), "--out", str(out), "--quiet",
                   "--instances", str(REPO_ROOT / INSTANCES_FILE)]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SettingsError(f"`{' '.join(command[1:])}` failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        write_atomic(stamp, key)
    return out


def _docs(path: Path) -> List[dict]:
    if not path.is_file():
        raise SettingsError(f"{path} is missing: is it a `python -m charts synth` output?")
    return [d for d in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def env_inputs(settings: EnvSettings, dist: Optional[str], cache_dir: Optional[str] = None) -> EnvInputs:
    """Plan, charts output, and the cluster-wide objects (rendered by the charts with the config's
    values: the only value in them is the role ARN, which the stacks create under that very name)."""
    plan = load_plan(settings)
    path = ensure_dist(settings, dist, cache_dir=cache_dir)
    cluster = _docs(path / "manifests" / "00-cluster.yaml")
    envoy = _docs(path / "envoy-gateway" / "envoyproxy.yaml")
    expected = settings.config.irsa.role_arn
    for doc in cluster:
        arn = (doc.get("metadata", {}).get("annotations") or {}).get("eks.amazonaws.com/role-arn")
        if arn is not None and arn != expected:
            raise SettingsError(f"{path}: ServiceAccount {doc['metadata'].get('name')} names role {arn}, but the "
                                f"stacks create {expected} (irsa of config/{settings.env}.yaml)")
    return EnvInputs(settings=settings, plan=plan, dist=path, cluster_objects=cluster + envoy,
                     gateway_host=settings.config.gateway.host)


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

    def plan_for(name: str) -> Optional[str]:
        return ctx(f"plan.{name}") or (ctx("plan") if name == env else None)

    def settings_for(name: str) -> EnvSettings:
        overrides = ctx(f"overrides.{name}")
        if isinstance(overrides, str):
            overrides = json.loads(overrides)
        return load_env(name, plan=plan_for(name), overrides=overrides, tag=tag)

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
                              gateway_host=i.gateway_host, top_level=top_level)

    chosen = settings_for(env)
    stage_names = as_list(pipe["stages"])
    mode = pipeline_mode(ctx("pipeline"))
    if mode != "off":
        missing = missing_plans({name: plan_path_for(name, plan=plan_for(name)) for name in stage_names})
        if missing and mode == "on":
            raise SettingsError("the pipeline stack (-c pipeline=true) needs every stage's plan; missing: "
                                + ", ".join(f"{name}: {path}" for name, path in missing.items()))
        if missing:
            print("modelfleet-pipeline left out: it needs every stage's plan, and these are missing: "
                  + ", ".join(f"{name}: {path}" for name, path in missing.items())
                  + " (restore plans/, or pass -c plan.<env>=PATH; -c pipeline=false silences this)", file=sys.stderr)
            mode = "off"
    stage_settings = [settings_for(name) for name in stage_names] if mode != "off" else []
    for s in [chosen, *stage_settings]:
        check_registry(s, registry.account, registry.region, chosen.repositories)
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
        variables = [{"env": s.env, "account": s.account, "region": s.region, "bucket": s.bucket_name,
                      "pipeline_account": registry.account} for s in [chosen, *stage_settings]]
        apply_acknowledgements(app, variables)
        Validations.of(app).add_plugins(nag_pack(app))
    return app
