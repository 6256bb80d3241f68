"""The stacks of one environment (`modelfleet-<env>-<part>`) and the shared stack (`modelfleet-shared`).

Parts, deployed in this order: `network` (VPC, endpoints), `data` (artifact bucket), `cluster` (EKS,
the system node group, add-ons, access entries), `nodes` (the plan's node groups: a stack apart, so a
node group that cannot launch rolls back only itself, never the cluster; stacks/cluster.py), `serving`
(IRSA role, cluster-wide objects, server releases, gateway address), `smoke` (the smoke test Job and its
result).

Image URIs have one source, config/<env>.yaml's `images` (the effective document: `-c tag=` retags
every image): `charts.config.helm_values` builds the values tree that `charts synth` writes into
dist/ and the stacks pass to every release.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from aws_cdk import Environment, Stack, Stage, Tags
from aws_cdk import aws_eks_v2 as eks
from constructs import Construct

from charts.config import helm_values
from contracts.models import Plan
from stacks import defaults
from stacks.addons import AddOns
from stacks.artifacts import ArtifactStore
from stacks.cluster import FleetCluster, PlanNodeGroups
from stacks.network import Network
from stacks.observability import Observability
from stacks.registry import ImageRegistry
from stacks.serving import GatewayAddress, MonitoringReleases, ServerReleases, ServingRole, envoy_proxy_for
from stacks.settings import EnvSettings
from stacks.sizing import neuron_scheduler_needed, plan_node_groups
from stacks.smoke import SmokeTest


@dataclass(frozen=True)
class Registry:
    account: str
    region: str


@dataclass
class PlatformStacks:
    network: Stack
    data: Stack
    cluster: Stack
    nodes: Stack
    serving: Stack
    smoke: Optional[Stack]
    fleet: FleetCluster
    plan_nodes: PlanNodeGroups
    smoke_test: Optional[SmokeTest]
    gateway: GatewayAddress

    @property
    def all(self) -> List[Stack]:
        return [s for s in (self.network, self.data, self.cluster, self.nodes, self.serving, self.smoke)
                if s is not None]


def _stack(scope: Construct, cid: str, name: str, settings: EnvSettings, description: str) -> Stack:
    stack = Stack(scope, cid, stack_name=name, description=description,
                  env=Environment(account=settings.account, region=settings.region),
                  termination_protection=settings.env == "prod")
    Tags.of(stack).add("modelfleet:environment", settings.env)
    return stack


def build_platform(scope: Construct, settings: EnvSettings, plan: Plan, *, dist: Path, cluster_objects: Sequence[dict],
                   gateway_host: str, top_level: bool) -> PlatformStacks:
    """The environment's stacks under `scope` (the App, or a pipeline Stage when `top_level` is False)."""
    p = settings.prefix()

    def cid(part: str) -> str:
        return f"{p}-{part}" if top_level else part

    cluster_name = p
    network = _stack(scope, cid("network"), f"{p}-network", settings, f"modelfleet {settings.env}: VPC and endpoints")
    net = Network(network, "Network", cidr=settings.vpc_cidr, max_azs=settings.max_azs,
                  nat_gateways=settings.nat_gateways, log_retention_days=settings.log_retention_days,
                  cluster_name=cluster_name)

    data = _stack(scope, cid("data"), f"{p}-data", settings, f"modelfleet {settings.env}: artifact store")
    bucket_name = settings.bucket_name
    store = ArtifactStore(data, "Artifacts", bucket_name=bucket_name, retain=True)

    specs = plan_node_groups(plan, burst_factor=settings.burst_factor,
                             allowed_families=settings.allowed_instance_families, label=str(settings.plan_path))
    cluster_stack = _stack(scope, cid("cluster"), f"{p}-cluster", settings,
                           f"modelfleet {settings.env}: EKS {defaults.KUBERNETES_VERSION}, node groups, add-ons")
    fleet = FleetCluster(cluster_stack, "Fleet", vpc=net.vpc, cluster_name=cluster_name,
                         endpoint_cidrs=settings.endpoint_cidrs, system_instance_type=settings.system_instance_type,
                         system_nodes=settings.system_nodes, system_max_nodes=settings.system_max_nodes,
                         log_retention_days=settings.log_retention_days, admin_role_arn=settings.admin_role_arn,
                         read_only_role_arn=settings.read_only_role_arn, retain=True)
    addons = AddOns(cluster_stack, "AddOns", cluster=fleet.cluster, cluster_name=cluster_name,
                    system_group=fleet.system_group, node_groups=specs,
                    neuron_scheduler=neuron_scheduler_needed(plan))
    # Metrics (kube-prometheus-stack, device exporters), container logs and KEDA (stacks/observability.py).
    observability = Observability(cluster_stack, "Observability", cluster=fleet.cluster, cluster_name=cluster_name,
                                  system_group=fleet.system_group, node_groups=specs,
                                  monitoring_namespace=settings.config.monitoring_namespace,
                                  config=settings.config.observability)
    nodes_stack = _stack(scope, cid("nodes"), f"{p}-nodes", settings,
                         f"modelfleet {settings.env}: the plan's node groups ({sum(s.desired for s in specs)} nodes)")
    # The cluster by name, not the construct: aws_eks_v2 makes its ALB controller wait for every node group
    # of a Cluster construct, which across stacks would be a cycle; the controller runs on the system nodes.
    cluster_ref = eks.Cluster.from_cluster_attributes(nodes_stack, "Cluster", cluster_name=cluster_name, vpc=net.vpc)
    plan_nodes = PlanNodeGroups(nodes_stack, "PlanNodes", cluster=cluster_ref, cluster_name=cluster_name,
                                node_role=fleet.node_role, node_groups=specs)
    nodes_stack.add_stack_dependency(cluster_stack, "the node groups join the cluster")

    serving = _stack(scope, cid("serving"), f"{p}-serving", settings,
                     f"modelfleet {settings.env}: server role, cluster-wide objects, {len(plan.servers)} servers")
    role = ServingRole(serving, "ServingRole", cluster=fleet.cluster, role_name=settings.serving_role_name,
                       namespace=settings.namespace, service_account=settings.service_account,
                       bucket_name=bucket_name, key=store.key, prefix=settings.store_prefix)
    # The config's own values (role ARN included: the role above is created under that very name).
    values = helm_values(settings.config)
    serving.add_stack_dependency(nodes_stack, "the servers' pods need the plan's nodes")
    real = list(cluster_objects)
    envoy_proxy = [o for o in real if o.get("kind") == "EnvoyProxy"]
    # After the add-ons: the Gateway API CRDs come with the Envoy Gateway chart.
    cluster_wide = _manifest(serving, "ClusterWide", fleet, [o for o in real if o.get("kind") != "EnvoyProxy"],
                             after=list(addons.charts.values()))
    proxy = _manifest(serving, "EnvoyProxy", fleet, envoy_proxy_for(
        envoy_proxy, internet_facing=settings.internet_facing, certificate_arn=settings.certificate_arn,
        source_cidrs=settings.source_cidrs, tls_port=settings.gateway_port), after=[addons.charts["envoy-gateway"]])
    # After KEDA: accelerator servers' charts hold ScaledObjects, whose CRD comes with it.
    releases = ServerReleases(serving, "Servers", cluster=fleet.cluster, namespace=settings.namespace, dist=dist,
                              values=values, after=[cluster_wide, proxy, role, observability.charts["keda"]])
    # PodMonitor, PrometheusRules, dashboard: after the namespace and kube-prometheus-stack (their CRDs).
    MonitoringReleases(serving, "Monitoring", cluster=fleet.cluster, namespace=settings.namespace, dist=dist,
                       after=[cluster_wide, observability.charts["kube-prometheus-stack"]])
    gateway = GatewayAddress(serving, "Gateway", cluster=fleet.cluster, name=settings.gateway_name,
                             namespace=settings.namespace, export_name=f"{p}-gateway-address",
                             after=[cluster_wide, proxy])

    smoke_stack, smoke = None, None
    if settings.smoke_test:
        smoke_stack = _stack(scope, cid("smoke"), f"{p}-smoke", settings, f"modelfleet {settings.env}: smoke test")
        image = settings.smoke_image or settings.image("cpu")
        routes = json.loads((dist / "routes.json").read_text())
        smoke = SmokeTest(smoke_stack, "Smoke", cluster=fleet.cluster, namespace=settings.namespace, image=image,
                          gateway_address=gateway.value.value, gateway_host=gateway_host,
                          gateway_port=settings.gateway_port, routes=routes,
                          release=digest(values["images"]), timeout_minutes=settings.smoke_timeout_minutes,
                          cluster_name=cluster_name, region=settings.region)
        for release in releases.releases.values():
            smoke.node.add_dependency(release)
    return PlatformStacks(network=network, data=data, cluster=cluster_stack, nodes=nodes_stack, serving=serving,
                          smoke=smoke_stack, fleet=fleet, plan_nodes=plan_nodes, smoke_test=smoke, gateway=gateway)


def _manifest(stack: Stack, id: str, fleet: FleetCluster, objs: Sequence[dict], after: Sequence[Construct] = ()):
    from aws_cdk import aws_eks_v2 as eks

    m = eks.KubernetesManifest(stack, id, cluster=fleet.cluster, manifest=list(objs))
    for dep in after:
        m.node.add_dependency(dep)
    return m


def build_shared(scope: Construct, *, registry: Registry, repositories: Mapping[str, str],
                 pull_accounts: Sequence[str]) -> Stack:
    stack = Stack(scope, "modelfleet-shared", stack_name="modelfleet-shared",
                  description="modelfleet: ECR repositories of the server images (pipeline account)",
                  env=Environment(account=registry.account, region=registry.region))
    ImageRegistry(stack, "Registry", names=dict(repositories), pull_accounts=pull_accounts,
                  keep_images=defaults.ECR_KEEP_IMAGES, retain=True)
    return stack


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class PlatformStage(Stage):
    """One environment as a CDK Pipelines stage (stack names stay `modelfleet-<env>-<part>`)."""

    def __init__(self, scope: Construct, id: str, *, settings: EnvSettings, build: Any) -> None:
        super().__init__(scope, id, env=Environment(account=settings.account, region=settings.region))
        self.platform: PlatformStacks = build(self, settings, top_level=False)
