"""Serving: the model servers' IAM role (IRSA), the cluster-wide objects inline, the servers as Helm
chart assets, and the gateway's address.

- The role has the fixed name the charts' config names (`irsa.role_name`), is read-only on the
  artifact prefix, and trusts only the namespace's ServiceAccount (OIDC `sub` and `aud` conditions).
  The charts create that ServiceAccount; the stacks create none.
- Cluster-wide objects (namespace, ServiceAccount, NetworkPolicies, GatewayClass, Gateway) are small:
  they go inline, built by `charts.synth.build_cluster` and rendered with the real values. The
  EnvoyProxy (the NLB's settings) goes after the Envoy Gateway chart that brings its CRD; where the
  environment is internet-facing the stacks add the ACM certificate and the source-CIDR allowlist.
- Per-server objects are far too big for a template (~1 MB of YAML for 3,040 models): each
  `dist/helm/servers-NNN/` folder is a `chart_asset` and the real values (image URIs, tag, store URI,
  role ARN) are passed as Helm `values`, since CDK tokens cannot reach inside asset files. Every server release
  comes after KEDA (its ScaledObject CRD).
- The monitoring objects (PodMonitor, PrometheusRules, the Grafana dashboard ConfigMap) ship the same way, each
  `dist/helm/monitoring-NNN/` folder one release in the servers' namespace (the dashboard's ConfigMap names the
  monitoring namespace itself), after kube-prometheus-stack (their CRDs and the operator's admission webhook):
  a fleet of 2,000 servers has some 9 MB of rules, far over a template's 1 MB.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from stacks.irsa import service_account_principal

SERVER_SHARD_PREFIX = "servers-"
MONITORING_CHART_PREFIX = "monitoring-"  # charts.monitoring's (not imported: that module starts cdk8s's kernel)


class ServingRole(Construct):
    """Props in: cluster (its OIDC provider), role name, namespace, ServiceAccount, bucket, prefix.
    Out: `role`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, role_name: str, namespace: str,
                 service_account: str, bucket_name: str, key: Optional[kms.IKey], prefix: str) -> None:
        super().__init__(scope, id)
        self.role = iam.Role(
            self, "Role",
            role_name=role_name,
            description=f"model servers in {namespace} (IRSA): read-only on the artifact store",
            assumed_by=service_account_principal(self, cluster, namespace, service_account),
            max_session_duration=Duration.hours(1),
        )
        prefix = prefix.strip("/")
        # The bucket's fixed name, not a cross-stack token: the policy reads as what it grants.
        bucket_arn = f"arn:aws:s3:::{bucket_name}"
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ReadArtifacts", actions=["s3:GetObject"], resources=[f"{bucket_arn}/{prefix}/*"]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ListArtifacts", actions=["s3:ListBucket"], resources=[bucket_arn],
            conditions={"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}))
        if key is not None:
            self.role.add_to_policy(iam.PolicyStatement(
                sid="DecryptArtifacts", actions=["kms:Decrypt"], resources=[key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{Stack.of(self).region}.amazonaws.com"}}))


def chart_folders(dist: Path, prefix: str) -> List[Path]:
    """`dist/helm/<prefix>NNN/` chart folders, in order."""
    helm = dist / "helm"
    folders = sorted(p for p in helm.glob(f"{prefix}*") if (p / "Chart.yaml").is_file())
    if not folders:
        raise FileNotFoundError(f"{helm}: no {prefix}*/Chart.yaml chart folders: run `python -m charts synth` again "
                                "(a dist/ written by an older version lacks them; the stacks' own cache, .cdk-dist/, "
                                "is made anew once removed)")
    return folders


def server_shards(dist: Path) -> List[Path]:
    """`dist/helm/servers-NNN/` chart folders, in order."""
    return chart_folders(dist, SERVER_SHARD_PREFIX)


def monitoring_charts(dist: Path) -> List[Path]:
    """`dist/helm/monitoring-NNN/` chart folders, in order."""
    return chart_folders(dist, MONITORING_CHART_PREFIX)


def envoy_proxy_for(objs: Sequence[Mapping[str, Any]], *, internet_facing: bool, certificate_arn: Optional[str],
                    source_cidrs: Sequence[str], tls_port: int) -> List[Dict[str, Any]]:
    """The EnvoyProxy objects, with TLS at the NLB and a source allowlist when internet-facing."""
    out = [copy.deepcopy(dict(o)) for o in objs]
    for obj in out:
        service = obj.setdefault("spec", {}).setdefault("provider", {}).setdefault("kubernetes", {}) \
            .setdefault("envoyService", {})
        annotations = service.setdefault("annotations", {})
        annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] = (
            "internet-facing" if internet_facing else "internal")
        if internet_facing:
            annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"] = str(certificate_arn)
            annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"] = str(tls_port)
            annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-negotiation-policy"] = \
                "ELBSecurityPolicy-TLS13-1-2-2021-06"
            service["loadBalancerSourceRanges"] = list(source_cidrs)
    return out


def chart_asset_releases(scope: Construct, folders: Sequence[Path], *, cluster: eks.ICluster, namespace: str,
                         values: Mapping[str, Any], after: Sequence[Construct]) -> Dict[str, eks.HelmChart]:
    """One release `modelfleet-<folder>` per chart folder, each an S3 asset, each after every construct of `after`
    (within a stack a DependsOn; across stacks CDK orders the stacks)."""
    releases: Dict[str, eks.HelmChart] = {}
    for folder in folders:
        asset = s3_assets.Asset(scope, f"Asset-{folder.name}", path=str(folder))
        release = eks.HelmChart(
            scope, f"Release-{folder.name}",
            cluster=cluster, chart_asset=asset, release=f"modelfleet-{folder.name}", namespace=namespace,
            values=dict(values), wait=False, timeout=Duration.minutes(15),
        )
        for dep in after:
            release.node.add_dependency(dep)
        releases[folder.name] = release
    return releases


class ServerReleases(Construct):
    """Props in: cluster, namespace, the dist/ folder, real Helm values, `after` (the KEDA chart among them). Out:
    `releases` {shard: HelmChart}."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, namespace: str, dist: Path,
                 values: Mapping[str, Any], after: Sequence[Construct] = ()) -> None:
        super().__init__(scope, id)
        self.releases = chart_asset_releases(self, server_shards(dist), cluster=cluster, namespace=namespace,
                                             values=values, after=after)


class MonitoringReleases(Construct):
    """The monitoring charts. Props in: cluster, the servers' namespace, the dist/ folder, `after` (the
    kube-prometheus-stack chart and the namespace). Out: `releases` {chart: HelmChart}. The charts take no values."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, namespace: str, dist: Path,
                 after: Sequence[Construct] = ()) -> None:
        super().__init__(scope, id)
        self.releases = chart_asset_releases(self, monitoring_charts(dist), cluster=cluster, namespace=namespace,
                                             values={}, after=after)


class GatewayAddress(Construct):
    """The Gateway's address from its status (`KubernetesObjectValue`), exported as an output."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, name: str, namespace: str,
                 export_name: str, after: Sequence[Construct] = ()) -> None:
        super().__init__(scope, id)
        self.value = eks.KubernetesObjectValue(
            self, "Value", cluster=cluster, object_type="gateway.gateway.networking.k8s.io",
            object_name=name, object_namespace=namespace, json_path=".status.addresses[0].value",
            timeout=Duration.minutes(10))
        for dep in after:
            self.value.node.add_dependency(dep)
        self.output = CfnOutput(self, "Address", value=self.value.value, export_name=export_name,
                                description="the Gateway's load balancer address (NLB DNS name)")

