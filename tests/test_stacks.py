"""stacks/ (issue 6): one synth of the whole CDK app per session, then checks on its templates.

The session synth runs `build_app` in a process of its own, with no AWS credentials or config in its
environment, over a small plan made with the existing planner: 60 mixed models whose profiles are
cut to one processor each (round robin), so the plan uses c5, g4dn/g5, inf1 and inf2 node groups;
planned with --min-replicas 2, which prod requires. Staging is made internet-facing with endpoint
CIDRs through `-c overrides.staging=...` (a partial config document), so both load-balancer shapes are
checked.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
ONE_MB = 1_000_000
STAGING_CERT = "arn:aws:acm:us-east-1:222222222222:certificate/00000000-0000-0000-0000-000000000000"
STAGING_OVERRIDES = {"gateway": {"internal": False},
                     "stacks": {"endpoint_cidrs": ["203.0.113.0/24"], "certificate_arn": STAGING_CERT,
                                "source_cidrs": ["198.51.100.0/24"]}}
REGISTRY = "444444444444.dkr.ecr.us-east-1.amazonaws.com"
PARTS = ("network", "data", "cluster", "nodes", "serving", "smoke")
TAG = "0123456789abcdef"

pytestmark = pytest.mark.timeout(600)


def _env() -> Dict[str, str]:
    """This machine's environment minus anything AWS: synth must need no credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-creds",
                "AWS_EC2_METADATA_DISABLED": "true", "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"})
    return env


def _run(args: List[str], **kw: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=_env(), **kw)
    assert done.returncode == 0, f"{' '.join(map(str, args))}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


@dataclass
class Synth:
    out: Path
    plan: dict
    dist: Path
    templates: Dict[str, dict]  # "modelfleet-dev-cluster", "modelfleet-pipeline/staging/cluster", ...
    files: Dict[str, Path]
    seconds: float


def _templates(out: Path) -> tuple:
    templates, files = {}, {}
    manifest = json.loads((out / "manifest.json").read_text())
    for aid, art in manifest["artifacts"].items():
        if art["type"] == "aws:cloudformation:stack":
            path = out / art["properties"]["templateFile"]
            templates[aid], files[aid] = json.loads(path.read_text()), path
        elif art["type"] == "cdk:cloud-assembly":
            sub = out / art["properties"]["directoryName"]
            for sart in json.loads((sub / "manifest.json").read_text())["artifacts"].values():
                if sart["type"] == "aws:cloudformation:stack":
                    path = sub / sart["properties"]["templateFile"]
                    templates[sart["displayName"]], files[sart["displayName"]] = json.loads(path.read_text()), path
    return templates, files


@pytest.fixture(scope="session")
def plan_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("stacks-plan")
    _run([PY, "-m", "packing", "generate", "--kind", "mixed", "--models", "60", "--seed", "3", "--out", str(tmp / "m.yaml")])
    catalogue = yaml.safe_load((tmp / "m.yaml").read_text())
    processors = ("cpu", "gpu", "inf1", "inf2")
    for i, model in enumerate(catalogue["models"]):
        keep = processors[i % 4]
        model["profiles"] = {keep: model["profiles"][keep]}
    (tmp / "m4.yaml").write_text(yaml.safe_dump(catalogue))
    _run([PY, "-m", "packing", "plan", "--models", str(tmp / "m4.yaml"), "--out", str(tmp / "plan.json"),
          "--time-limit", "5", "--quiet", "--min-replicas", "2"])
    return tmp / "plan.json"


@pytest.fixture(scope="session")
def synth(tmp_path_factory, plan_file) -> Synth:
    import time

    tmp = tmp_path_factory.mktemp("stacks-synth")
    out, dist_cache = tmp / "cdk.out", tmp / "dist"
    context = {"plan.dev": str(plan_file), "plan.staging": str(plan_file), "plan.prod": str(plan_file),
               "dist_cache": str(dist_cache), "tag": TAG, "overrides.staging": STAGING_OVERRIDES, "pipeline": "true"}
    code = ("import json, sys; from stacks.app import build_app; "
            "build_app(json.loads(sys.argv[1]), outdir=sys.argv[2]).synth()")
    t0 = time.perf_counter()
    _run([PY, "-c", code, json.dumps(context), str(out)], timeout=480)
    seconds = time.perf_counter() - t0
    templates, files = _templates(out)
    return Synth(out=out, plan=json.loads(plan_file.read_text()), dist=dist_cache / "dev", templates=templates,
                 files=files, seconds=seconds)


def _template(synth: Synth, name: str):
    from aws_cdk.assertions import Template

    return Template.from_json(synth.templates[name])


def _resources(template: dict, type_: str) -> Dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def _acks() -> dict:
    return yaml.safe_load((ROOT / "stacks" / "acknowledgements.yaml").read_text())


# ---- pure parts, no synth ---------------------------------------------------------------------------

def test_node_group_specs_from_instance_counts():
    from stacks.settings import SettingsError
    from stacks.sizing import AMI_NEURON, AMI_NVIDIA, AMI_STANDARD, node_group_specs

    specs = {s.instance_type: s for s in node_group_specs(
        {"c5.xlarge": 3, "g4dn.xlarge": 1, "g5.xlarge": 2, "inf1.6xlarge": 40, "inf2.xlarge": 0},
        burst_factor=1.5, allowed_families=["c5", "g4dn", "g5", "inf1", "inf2"])}
    assert set(specs) == {"c5.xlarge", "g4dn.xlarge", "g5.xlarge", "inf1.6xlarge"}  # a zero count makes no group
    assert specs["c5.xlarge"].ami_type == AMI_STANDARD
    assert specs["g4dn.xlarge"].ami_type == specs["g5.xlarge"].ami_type == AMI_NVIDIA
    assert specs["inf1.6xlarge"].ami_type == AMI_NEURON
    # Every plan node group is tainted, cpu too, with the key and value the servers tolerate.
    for itype, processor in (("c5.xlarge", "cpu"), ("g5.xlarge", "gpu"), ("inf1.6xlarge", "inf1")):
        assert [(t.key, t.value, t.effect) for t in specs[itype].taints] == [
            ("modelfleet.io/plan-node", processor, "NO_SCHEDULE")], itype
        assert specs[itype].imds_hop_limit == 1  # no pod on a plan node reads instance metadata
    inf1 = specs["inf1.6xlarge"]
    assert (inf1.desired, inf1.min_size, inf1.max_size) == (40, 40, 60)
    assert specs["g4dn.xlarge"].max_size == 2  # ceil(1 x 1.5)
    with pytest.raises(SettingsError, match="allowed_instance_families"):
        node_group_specs({"inf2.xlarge": 1}, burst_factor=2, allowed_families=["c5"])
    with pytest.raises(SettingsError, match="no AMI"):
        node_group_specs({"p4d.24xlarge": 1}, burst_factor=2, allowed_families=["p4d"])


def _write_config(tmp_path: Path, env: str, **over: Any) -> None:
    from stacks.settings import merge

    data = yaml.safe_load((ROOT / "config" / "prod.yaml").read_text())
    data = merge(data, {"environment": env, **over})
    (tmp_path / f"{env}.yaml").write_text(yaml.safe_dump(data))


def test_settings_read_the_charts_model_and_take_defaults_for_the_rest(tmp_path):
    from stacks import defaults
    from stacks.settings import SettingsError, load_env

    with pytest.raises(SettingsError, match="does not exist"):
        load_env("staging", config_dir=tmp_path)  # no config/staging.yaml at all
    _write_config(tmp_path, "staging")  # prod's file as staging's, its stacks block cut down to the region
    data = yaml.safe_load((tmp_path / "staging.yaml").read_text())
    data["stacks"] = {"region": "us-east-1"}
    (tmp_path / "staging.yaml").write_text(yaml.safe_dump(data))
    s = load_env("staging", config_dir=tmp_path)
    assert s.account == "333333333333" and s.region == defaults.DEFAULT_REGION  # the account is irsa.account
    assert s.burst_factor == 1.5 and s.endpoint_cidrs == () and not s.internet_facing
    assert s.plan_path == ROOT / "plans" / "staging.json"  # the default names the reviewed plan
    assert s.serving_role_name == "modelfleet-prod-server" and s.admin_role_arn is None
    _write_config(tmp_path, "prod", irsa={"role_name": "r", "account": "999999999999"}, store_uri="s3://b-1/models",
                  gateway={"internal": False})
    with pytest.raises(SettingsError, match="certificate_arn"):
        load_env("prod", config_dir=tmp_path)
    p = load_env("prod", config_dir=tmp_path, tag="abc",
                 overrides={"stacks": {"certificate_arn": "arn:c", "source_cidrs": ["10.0.0.0/8"]}})
    assert (p.account, p.serving_role_name, p.bucket_name, p.store_prefix) == ("999999999999", "r", "b-1", "models")
    assert p.repositories["cpu"] == "modelfleet-server-cpu" and p.image("cpu") == f"{REGISTRY}/modelfleet-server-cpu:abc"
    assert p.document["images"]["inf2"]["tag"] == "abc" and p.internet_facing
    # What charts synth is given: the stacks block with its defaults resolved (the HPAs' burst factor).
    assert s.document["stacks"]["burst_factor"] == 1.5 and s.document["stacks"]["max_azs"] == defaults.COMMON["max_azs"]
    # One reading: a key the charts' model does not know is an error for the stacks too (no aliases).
    _write_config(tmp_path, "dev", stacks={"account": "111111111111"})
    with pytest.raises(SettingsError, match="account"):
        load_env("dev", config_dir=tmp_path)
    _write_config(tmp_path, "dev", images={"cpu": {"repository": "docker.io/me/cpu", "tag": "1"}})
    with pytest.raises(SettingsError, match="ECR repository"):
        load_env("dev", config_dir=tmp_path)


def test_every_config_parses_with_the_one_model():
    from charts.config import EnvConfig
    from contracts.loading import load
    from stacks.settings import load_env

    for env in ("dev", "staging", "prod"):
        config = load(EnvConfig, ROOT / "config" / f"{env}.yaml")
        s = load_env(env)
        assert s.config == config and s.plan_path == ROOT / "plans" / f"{env}.json"
        assert s.admin_role_arn and s.read_only_role_arn


def test_helm_values_are_built_in_one_place():
    from charts import synth as charts_synth
    from charts.config import helm_values
    from stacks import platform

    # The stacks pass charts.config.helm_values; charts synth writes it (or its own thin wrapper of it).
    assert platform.helm_values is helm_values
    assert getattr(charts_synth, "helm_values", helm_values)(load_config("dev")) == helm_values(load_config("dev"))


def load_config(env: str):
    from charts.config import EnvConfig
    from contracts.loading import load

    return load(EnvConfig, ROOT / "config" / f"{env}.yaml")


def test_cluster_autoscaler_tracks_the_cluster_minor_and_neuron_scheduler_only_when_needed():
    from stacks import defaults
    from stacks.addons import check_autoscaler_version, minor
    from stacks.sizing import neuron_scheduler_needed

    assert minor(defaults.CHARTS["cluster-autoscaler"]["image_tag"]) == defaults.KUBERNETES_VERSION == "1.36"
    with pytest.raises(ValueError, match="minor"):
        check_autoscaler_version("v1.34.1", "1.36")
    plan = json.loads((ROOT / "plans" / "dev.json").read_text())
    from contracts.models import Plan

    one = Plan.model_validate(plan)
    neuron = [s for s in one.servers if s.processor in ("inf1", "inf2")]
    assert neuron and not neuron_scheduler_needed(one)  # one chip per pod: no scheduler extension
    server = neuron[0].model_copy(update={"requests": neuron[0].requests.model_copy(update={
        "accelerator": neuron[0].requests.accelerator.model_copy(update={"count": 2})})})
    assert neuron_scheduler_needed(one.model_copy(update={"servers": [server]}))


def test_pipeline_stack_only_when_every_stage_plan_exists(plan_file, tmp_path):
    """`cdk synth -c env=dev -c plan=PLAN` works with no other stage's plan: the pipeline is left out and
    says why; asked for with -c pipeline=true it is an error naming the missing plan."""
    from stacks.app import build_app
    from stacks.settings import SettingsError

    missing = str(tmp_path / "no-such-plan.json")
    with pytest.raises(SettingsError, match="no-such-plan.json"):
        build_app({"plan": str(plan_file), "plan.prod": missing, "pipeline": "true", "nag": "false"})
    code = ("import json, sys; from stacks.app import build_app; "
            "build_app(json.loads(sys.argv[1]), outdir=sys.argv[2]).synth()")
    ctx = {"plan": str(plan_file), "plan.staging": missing, "plan.prod": missing, "nag": "false",
           "dist_cache": str(tmp_path / "dist")}
    done = _run([PY, "-c", code, json.dumps(ctx), str(tmp_path / "out")], timeout=480)
    assert "modelfleet-pipeline left out" in done.stderr and "no-such-plan.json" in done.stderr
    templates, _ = _templates(tmp_path / "out")
    assert "modelfleet-pipeline" not in templates and {f"modelfleet-dev-{p}" for p in PARTS} <= set(templates)


def test_committed_plans_are_valid_and_named_by_the_configs():
    """plans/<env>.json: what the pipeline deploys, checked against their catalogue by the independent checker."""
    for env in ("dev", "staging", "prod"):
        config = yaml.safe_load((ROOT / "config" / f"{env}.yaml").read_text())
        assert config["stacks"]["plan"] == f"plans/{env}.json"
        path = ROOT / "plans" / f"{env}.json"
        plan = json.loads(path.read_text())
        catalogue = next(iter(k for k in plan["inputs"] if k.startswith("plans/")))
        assert (ROOT / catalogue).is_file(), catalogue
        assert min(s["replicas"] for s in plan["servers"]) >= config["min_replicas"]
        _run([PY, str(ROOT.parent / "shared" / "tools" / "check_plan.py"), str(ROOT / catalogue),
              str(ROOT / "config" / "instances.yaml"), str(path), str(plan["options"]["max_utilization"]), "0"])


def test_envoy_proxy_gets_tls_and_allowlist_only_when_internet_facing():
    from stacks.serving import envoy_proxy_for

    proxy = [{"kind": "EnvoyProxy", "spec": {"provider": {"kubernetes": {"envoyService": {"annotations": {
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}}}}}}]
    internal = envoy_proxy_for(proxy, internet_facing=False, certificate_arn=None, source_cidrs=[], tls_port=443)
    svc = internal[0]["spec"]["provider"]["kubernetes"]["envoyService"]
    assert svc["annotations"]["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    assert "loadBalancerSourceRanges" not in svc and not any("ssl" in k for k in svc["annotations"])
    public = envoy_proxy_for(proxy, internet_facing=True, certificate_arn="arn:cert", source_cidrs=["1.2.3.0/24"],
                             tls_port=443)[0]["spec"]["provider"]["kubernetes"]["envoyService"]
    assert public["annotations"]["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"] == "arn:cert"
    assert public["loadBalancerSourceRanges"] == ["1.2.3.0/24"]
    assert proxy[0]["spec"]["provider"]["kubernetes"]["envoyService"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}  # input untouched


def test_acknowledgements_are_complete_and_pinned():
    from stacks.nag import MIN_REASON, load_acknowledgements

    acks = load_acknowledgements()
    for a in acks:
        assert len(a.reason) >= MIN_REASON, a
    data = _acks()
    for section, keys in (("checkov", ("check", "resource", "reason")), ("cfn_lint", ("rule", "template", "reason"))):
        for entry in data[section]:
            assert all(entry.get(k) for k in keys) and len(entry["reason"]) >= MIN_REASON, entry
    pinned = sorted([(a.rule, a.path) for a in acks] + [(e["check"], e["resource"]) for e in data["checkov"]]
                    + [(e["rule"], e["template"]) for e in data["cfn_lint"]])
    digest = hashlib.sha256(json.dumps(pinned).encode()).hexdigest()[:16]
    # A new acknowledgement is a reviewed change: update this pin together with the file.
    assert (len(acks), len(data["checkov"]), len(data["cfn_lint"]), digest) == (56, 11, 1, "c4c69d82e016f2da"), digest


# ---- the session synth ------------------------------------------------------------------------------

def test_synth_produces_every_stack(synth):
    names = set(synth.templates)
    for part in PARTS:
        assert f"modelfleet-dev-{part}" in names
        for env in ("dev", "staging", "prod"):
            assert f"modelfleet-pipeline/{env}/{part}" in names
    assert {"modelfleet-shared", "modelfleet-pipeline"} <= names


def test_every_template_is_under_1_mb(synth):
    sizes = {name: path.stat().st_size for name, path in synth.files.items()}
    assert max(sizes.values()) < ONE_MB, sizes


def test_node_groups_sized_from_the_plan(synth):
    from stacks.sizing import FAMILY_AMI, family_of

    plan = synth.plan
    for name, burst in (("modelfleet-dev", 2.0), ("modelfleet-pipeline/prod", 1.5)):
        sep = "-" if name == "modelfleet-dev" else "/"
        cluster = synth.templates[f"{name}{sep}cluster"]
        nodes = synth.templates[f"{name}{sep}nodes"]
        groups = {**_resources(cluster, "AWS::EKS::Nodegroup"), **_resources(nodes, "AWS::EKS::Nodegroup")}
        by_type = {g["Properties"]["InstanceTypes"][0]: g["Properties"] for g in groups.values()}
        assert set(by_type) == set(plan["instances"]) | {"m5.large"}
        # The plan's groups are in the nodes stack (a failed one rolls back only that), the system group is not.
        assert {g["Properties"]["InstanceTypes"][0] for g in _resources(nodes, "AWS::EKS::Nodegroup").values()} \
            == set(plan["instances"])
        assert {family_of(t) for t in plan["instances"]} >= {"c5", "inf1", "inf2"}
        for itype, count in plan["instances"].items():
            p = by_type[itype]
            assert p["AmiType"] == FAMILY_AMI[family_of(itype)].replace("X86_64", "x86_64")
            assert p["ScalingConfig"] == {"DesiredSize": count, "MinSize": count, "MaxSize": math.ceil(count * burst)}
            taints = [(t["Key"], t["Value"], t["Effect"]) for t in p.get("Taints", [])]
            processor = p["Labels"]["modelfleet.io/processor"]
            assert taints == [("modelfleet.io/plan-node", processor, "NO_SCHEDULE")], itype
            assert processor in ("cpu", "gpu", "inf1", "inf2")
            assert "DiskSize" not in p and "LaunchTemplate" in p  # the root volume is the launch template's
        system = by_type["m5.large"]
        assert "Taints" not in system and system["AmiType"] == "AL2023_x86_64_STANDARD"
        assert system["ScalingConfig"]["DesiredSize"] == 2 and system["Labels"]["modelfleet.io/pool"] == "system"
        for template in (cluster, nodes):
            for lt in _resources(template, "AWS::EC2::LaunchTemplate").values():
                data = lt["Properties"]["LaunchTemplateData"]
                assert data["MetadataOptions"] == {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                                   "HttpPutResponseHopLimit": 1}
                assert [(b["DeviceName"], b["Ebs"]["VolumeType"], b["Ebs"]["Encrypted"]) for b in data["BlockDeviceMappings"]] \
                    == [("/dev/xvda", "gp3", True)]
                assert "ImageId" not in data and "InstanceType" not in data  # the node group sets them
            for g in {**_resources(template, "AWS::EKS::Nodegroup")}.values():
                ref = g["Properties"]["LaunchTemplate"]["Id"]["Ref"]
                assert template["Resources"][ref]["Type"] == "AWS::EC2::LaunchTemplate"


def test_cluster_auto_mode_off_logging_encryption_endpoint(synth):
    from aws_cdk.assertions import Match

    t = _template(synth, "modelfleet-dev-cluster")
    t.has_resource_properties("AWS::EKS::Cluster", {
        "Version": "1.36",
        "ComputeConfig": {"Enabled": False},
        "Logging": {"ClusterLogging": {"EnabledTypes": Match.array_with([{"Type": k} for k in (
            "api", "audit", "authenticator", "controllerManager", "scheduler")])}},
        "EncryptionConfig": [{"Provider": {"KeyArn": Match.any_value()}, "Resources": ["secrets"]}],
        "ResourcesVpcConfig": Match.object_like({"EndpointPublicAccess": False, "EndpointPrivateAccess": True}),
    })
    staging = _template(synth, "modelfleet-pipeline/staging/cluster")
    staging.has_resource_properties("AWS::EKS::Cluster", {"ResourcesVpcConfig": Match.object_like({
        "EndpointPublicAccess": True, "EndpointPrivateAccess": True, "PublicAccessCidrs": ["203.0.113.0/24"]})})
    t.has_resource_properties("AWS::EKS::Addon", {
        "AddonName": "vpc-cni", "ResolveConflicts": "OVERWRITE",
        "ConfigurationValues": Match.string_like_regexp('"enableNetworkPolicy":"true"')})
    # Control-plane logs: a log group of ours with the environment's retention, made before the cluster.
    raw = synth.templates["modelfleet-dev-cluster"]
    logs = {k: r for k, r in _resources(raw, "AWS::Logs::LogGroup").items()
            if r["Properties"].get("LogGroupName") == "/aws/eks/modelfleet-dev/cluster"}
    assert [r["Properties"]["RetentionInDays"] for r in logs.values()] == [90]
    cluster_id = next(iter(_resources(raw, "AWS::EKS::Cluster")))
    assert set(logs) <= set(raw["Resources"][cluster_id].get("DependsOn", []))


def test_operator_access_entries(synth):
    from aws_cdk.assertions import Match

    for name, env, account in (("modelfleet-dev-cluster", "dev", "111111111111"),
                               ("modelfleet-pipeline/prod/cluster", "prod", "333333333333")):
        t = _template(synth, name)
        for role, policy in (("admin", "AmazonEKSClusterAdminPolicy"), ("read-only", "AmazonEKSAdminViewPolicy")):
            t.has_resource_properties("AWS::EKS::AccessEntry", {
                "PrincipalArn": f"arn:aws:iam::{account}:role/modelfleet-{env}-{role}",
                "AccessPolicies": [{"AccessScope": {"Type": "cluster"},
                                    "PolicyArn": Match.object_like({"Fn::Join": Match.array_with([
                                        Match.array_with([f":eks::aws:cluster-access-policy/{policy}"])])})}]})


def test_exactly_one_neuron_device_plugin_and_the_add_ons(synth):
    cluster = synth.templates["modelfleet-dev-cluster"]
    charts = {r["Properties"]["Chart"]: r["Properties"] for r in cluster["Resources"].values()
              if r["Type"] == "Custom::AWSCDK-EKS-HelmChart"}
    assert {"cluster-autoscaler", "metrics-server", "gateway-helm", "nvidia-device-plugin", "neuron-helm-chart",
            "aws-load-balancer-controller"} <= set(charts)
    assert all(p.get("Version") for p in charts.values())  # every chart pinned
    ca = charts["cluster-autoscaler"]
    assert ca["Version"] == "9.59.0" and '"tag":"v1.36.' in json.dumps(ca["Values"]).replace(" ", "").replace('\\', '')
    # Add-ons on the system nodes; device plugins tolerate the plan-node taint; no Neuron scheduler extension
    # (no pod of this plan asks for more than one chip).
    for chart in ("cluster-autoscaler", "metrics-server", "gateway-helm", "aws-load-balancer-controller"):
        assert "modelfleet.io/pool" in json.dumps(charts[chart]["Values"]), chart
    for chart in ("nvidia-device-plugin", "neuron-helm-chart"):
        assert "modelfleet.io/plan-node" in json.dumps(charts[chart]["Values"]), chart
    assert '\\"scheduler\\":{\\"enabled\\":false}' in json.dumps(charts["neuron-helm-chart"]["Values"])
    manifests = json.dumps([r for r in cluster["Resources"].values() if r["Type"] == "Custom::AWSCDK-EKS-KubernetesResource"])
    assert "neuron-device-plugin" not in manifests  # aws_eks_v2's bundled plugin is not added
    assert charts["gateway-helm"]["Repository"] == "oci://docker.io/envoyproxy/gateway-helm"


def test_irsa_trust_is_bound_to_the_namespace_service_account(synth):
    for name, env in (("modelfleet-dev-serving", "dev"), ("modelfleet-pipeline/prod/serving", "prod")):
        t = synth.templates[name]
        roles = _resources(t, "AWS::IAM::Role")
        role = next(r for r in roles.values() if r["Properties"].get("RoleName") == f"modelfleet-{env}-server")
        statement = role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert "Federated" in statement["Principal"]
        cond = json.dumps(statement["Condition"]["StringEquals"])
        json_res = [r for r in t["Resources"].values() if r["Type"] == "Custom::AWSCDKCfnJson"]
        values = json.dumps([r["Properties"]["Value"] for r in json_res])
        assert "TrustConditions" in cond  # the CfnJson below, whose keys carry the cluster's issuer
        trust = next(r["Properties"]["Value"] for k, r in t["Resources"].items()
                     if r["Type"] == "Custom::AWSCDKCfnJson" and k.startswith("ServingRoleTrustConditions"))
        trust = json.dumps(trust)  # {"<issuer>:sub": "...", "<issuer>:aud": "..."} as a Fn::Join
        assert ':sub\\":\\"system:serviceaccount:modelfleet:modelfleet-server\\"' in trust
        assert ':aud\\":\\"sts.amazonaws.com\\"' in trust and trust.count(":oidc-provider/") == 2
        assert values.count("system:serviceaccount:") == 1
        policy = json.dumps(_resources(t, "AWS::IAM::Policy"))
        assert f"arn:aws:s3:::modelfleet-{env}-" in policy and "/store/*" in policy
        assert "s3:PutObject" not in policy and "s3:*" not in policy


def test_artifact_bucket_settings(synth):
    from aws_cdk.assertions import Match

    t = _template(synth, "modelfleet-dev-data")
    t.has_resource_properties("AWS::S3::Bucket", {
        "BucketName": "modelfleet-dev-111111111111",
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [Match.object_like({
            "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": Match.any_value()}})]},
        "VersioningConfiguration": {"Status": "Enabled"},
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                           "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
        "LoggingConfiguration": {"DestinationBucketName": Match.any_value(), "LogFilePrefix": "artifacts/"},
    })
    policies = json.dumps(_resources(synth.templates["modelfleet-dev-data"], "AWS::S3::BucketPolicy"))
    assert '"aws:SecureTransport": "false"' in policies and '"Effect": "Deny"' in policies


def test_ecr_repositories(synth):
    repos = _resources(synth.templates["modelfleet-shared"], "AWS::ECR::Repository")
    assert {r["Properties"]["RepositoryName"] for r in repos.values()} == {
        f"modelfleet-server-{p}" for p in ("cpu", "gpu", "inf1", "inf2")}
    for r in repos.values():
        p = r["Properties"]
        assert p["ImageScanningConfiguration"] == {"ScanOnPush": True}
        assert p["ImageTagMutability"] == "IMMUTABLE"
        assert "LifecyclePolicyText" in p["LifecyclePolicy"]
        pulls = json.dumps(p["RepositoryPolicyText"])
        for account in ("111111111111", "222222222222", "333333333333"):
            assert account in pulls


def test_servers_are_helm_chart_assets_with_real_values(synth):
    serving = synth.templates["modelfleet-dev-serving"]
    releases = [r["Properties"] for r in serving["Resources"].values() if r["Type"] == "Custom::AWSCDK-EKS-HelmChart"
                and r["Properties"]["Release"].startswith("modelfleet-servers-")]  # not the monitoring charts
    shards = sorted(p.name for p in (synth.dist / "helm").glob("servers-*"))
    assert len(releases) == len(shards) >= 1
    # One source of image URIs: what dist/manifests/ names is what the releases are given.
    manifests = "".join(p.read_text() for p in (synth.dist / "manifests" / "servers").glob("*.yaml"))
    named = {i.strip('"') for i in re.findall(r"image: (\S+)", manifests)}
    assert named and all(i.startswith(f"{REGISTRY}/modelfleet-server-") and i.endswith(f":{TAG}") for i in named), named
    for p in releases:
        assert "ChartAssetURL" in p
        values = json.dumps(p["Values"])
        assert f"{REGISTRY}/modelfleet-server-inf1" in values
        assert TAG in values and "s3://modelfleet-dev-111111111111/store" in values and "roleArn" in values
        for image in named:
            repository, tag = image.rsplit(":", 1)
            assert repository in values and tag in values
    inline = json.dumps([r for r in serving["Resources"].values() if r["Type"] == "Custom::AWSCDK-EKS-KubernetesResource"])
    for kind in ("Deployment", "ConfigMap", "HorizontalPodAutoscaler", "HTTPRoute"):  # no per-server object inline
        assert f'\\"kind\\":\\"{kind}\\"' not in inline, kind
    assert "GatewayClass" in inline and "EnvoyProxy" in inline


def test_gateway_address_exported_and_load_balancer_shape(synth):
    serving = synth.templates["modelfleet-dev-serving"]
    values = [r["Properties"] for r in serving["Resources"].values() if r["Type"] == "Custom::AWSCDK-EKS-KubernetesObjectValue"]
    assert any(v["JsonPath"] == ".status.addresses[0].value" and v["ObjectType"] == "gateway.gateway.networking.k8s.io"
               for v in values)
    assert any(o.get("Export", {}).get("Name") == "modelfleet-dev-gateway-address" for o in serving["Outputs"].values())
    dev = json.dumps(serving)
    assert "aws-load-balancer-scheme\\\":\\\"internal" in dev and "ssl-cert" not in dev
    staging = json.dumps(synth.templates["modelfleet-pipeline/staging/serving"])
    assert "internet-facing" in staging and STAGING_CERT in staging and "198.51.100.0/24" in staging


def test_pipeline(synth):
    t = synth.templates["modelfleet-pipeline"]
    pipeline = next(iter(_resources(t, "AWS::CodePipeline::Pipeline").values()))["Properties"]
    assert pipeline["PipelineType"] == "V2"
    stages = [s["Name"] for s in pipeline["Stages"]]
    assert stages[:2] == ["Source", "Build"] and stages[-3:] == ["dev", "staging", "prod"]
    actions = {s["Name"]: [a["Name"] for a in s["Actions"]] for s in pipeline["Stages"]}
    assert "Approve-prod" in actions["prod"] and not any(a.startswith("Approve") for a in actions["dev"] + actions["staging"])
    for env in ("dev", "staging", "prod"):
        assert f"Smoke-{env}" in actions[env]
    projects = _resources(t, "AWS::CodeBuild::Project")
    text = json.dumps(projects)
    assert "npx cdk synth -c tag=" in text and "-c pipeline=true" in text and "Complete" in text
    assert all(p["Properties"].get("TimeoutInMinutes") for p in projects.values())  # every project: explicit
    # One image project per processor, privileged, in the first stage's pre-steps: run side by side.
    images = {p: r for p in ("cpu", "gpu", "inf1", "inf2") for r in projects.values()
              if f"python -m serving build --processor {p} " in json.dumps(r)}
    assert len(images) == 4 and all(r["Properties"]["Environment"]["PrivilegedMode"] for r in images.values())
    assert {r["Properties"]["TimeoutInMinutes"] for r in images.values()} == {120}
    dev_stage = next(s for s in pipeline["Stages"] if s["Name"] == "dev")
    image_actions = [a for a in dev_stage["Actions"] if a["Name"].startswith("Image-")]
    assert len(image_actions) == 4 and len({a["RunOrder"] for a in image_actions}) == 1
    # The smoke check's failure says what to run, with the cluster, namespace and Job filled in.
    smoke_projects = json.dumps([r for r in projects.values() if "SMOKE_CONDITIONS" in json.dumps(r)])
    assert "kubectl -n modelfleet logs job/smoke-" in smoke_projects
    assert "aws eks update-kubeconfig --region us-east-1 --name modelfleet-prod" in smoke_projects
    smoke = synth.templates["modelfleet-pipeline/prod/smoke"]
    job = json.dumps([r for r in smoke["Resources"].values() if r["Type"] == "Custom::AWSCDK-EKS-KubernetesResource"])
    assert "runpy.run_module('loadtest'" in job and "'smoke', '--routes'" in job and "backoffLimit" in job
    assert "SMOKE_ROUTES" in job and "models.prod.modelfleet.internal" in job
    assert any(o["Value"] for o in smoke["Outputs"].values())


def test_cdk_nag_zero_unacknowledged_findings_and_no_stale_acknowledgement(synth):
    from stacks.nag import load_acknowledgements, report_findings

    report = json.loads((synth.out / "validation-report.json").read_text())
    assert report_findings(report) == []
    assert all(p["conclusion"] == "success" for p in report["pluginReports"])
    tree = json.loads((synth.out / "tree.json").read_text())
    paths: List[str] = []

    def walk(node: dict) -> None:
        paths.append(node.get("path", ""))
        for child in (node.get("children") or {}).values():
            walk(child)

    walk(tree["tree"])
    for ack in load_acknowledgements():
        assert any(fnmatch.fnmatchcase(p, ack.path) for p in paths), f"acknowledgement matches nothing: {ack}"


def _distinct_files(synth: Synth) -> List[Path]:
    """The templates minus the pipeline's dev stage, which is built by the same code from the same
    settings as the top-level modelfleet-dev-* stacks."""
    return [path for name, path in synth.files.items() if not name.startswith("modelfleet-pipeline/dev/")]


@pytest.fixture(scope="session")
def linters(synth, tmp_path_factory) -> Dict[str, Any]:
    """cfn-lint and checkov started together (each is single-threaded), read by the two tests below."""
    flat = tmp_path_factory.mktemp("stacks-templates")
    for path in _distinct_files(synth):
        shutil.copy(path, flat / path.name)
    procs: Dict[str, Any] = {"cfn_lint": subprocess.Popen(
        [str(CFN_LINT), "--format", "json", *map(str, sorted(flat.iterdir()))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)}
    if CHECKOV.exists():
        procs["checkov"] = subprocess.Popen(
            [str(CHECKOV), "-d", str(flat), "--framework", "cloudformation", "-o", "json", "--quiet", "--compact"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    results = {name: proc.communicate(timeout=400) for name, proc in procs.items()}
    return {name: json.loads(out or "[]") for name, (out, _err) in results.items()}


def test_cfn_lint_no_errors(linters):
    allowed = _acks()["cfn_lint"]
    errors = [f for f in linters["cfn_lint"] if f["Level"] == "Error"]
    unlisted = [f for f in errors if not any(
        e["rule"] == f["Rule"]["Id"] and fnmatch.fnmatchcase(Path(f["Filename"]).name, e["template"]) for e in allowed)]
    assert unlisted == [], json.dumps(unlisted[:5], indent=1)


def test_checkov_failures_only_where_listed(linters):
    if "checkov" not in linters:
        pytest.skip("no .venv-checkov: `make checkov-env` creates it")
    reports = linters["checkov"]
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(f["check_id"], f["resource"], f["file_path"]) for r in reports for f in r["results"]["failed_checks"]]
    listed = _acks()["checkov"]
    unlisted = [f for f in failed if not any(e["check"] == f[0] and fnmatch.fnmatchcase(f[1], e["resource"]) for e in listed)]
    assert unlisted == [], unlisted[:10]
    unused = [e for e in listed if not any(e["check"] == f[0] and fnmatch.fnmatchcase(f[1], e["resource"]) for f in failed)]
    assert unused == [], unused
