"""Add-ons: cluster-autoscaler (IRSA), metrics-server, Envoy Gateway, NVIDIA and Neuron device plugins.

aws-load-balancer-controller is aws_eks_v2's own `AlbController` (IRSA, its IAM policy shipped with
aws-cdk-lib), switched on in stacks/cluster.py; it turns the Envoy proxies' LoadBalancer Service into
an NLB (internal unless the environment says internet-facing). Each chart is pinned in
stacks/defaults.py. Every add-on is pinned to the untainted system nodes (`nodeSelector
modelfleet.io/pool: system`; the plan nodes' taint keeps them off those anyway) except the device
plugins, which tolerate the plan-node taint and select their processor's nodes.

cluster-autoscaler runs the minor of the cluster's Kubernetes (checked here, at synth). The Neuron
scheduler extension is installed only when some server's pod asks for more than one Neuron device
(stacks.sizing.neuron_scheduler_needed); otherwise the default scheduler places one-device pods right.

Exactly one Neuron device plugin: node groups are built with `eks.Nodegroup(...)` (which adds none)
and the Neuron Helm chart installs the current plugin; `add_nodegroup_capacity` would add aws_eks_v2's
bundled manifest as well, an older plugin with no version pin we control.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from aws_cdk import Duration, Stack
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from constructs import Construct

from charts.constants import ENVOY_GATEWAY_NAMESPACE as ENVOY_NAMESPACE
from charts.constants import PLAN_NODE_TAINT_KEY
from stacks import defaults
from stacks.sizing import LABEL_POOL, LABEL_PROCESSOR, SYSTEM_POOL, NodeGroupSpec

SYSTEM_NODES = {LABEL_POOL: SYSTEM_POOL}


def _toleration(key: str) -> Dict[str, str]:
    return {"key": key, "operator": "Exists", "effect": "NoSchedule"}


def minor(version: str) -> str:
    """"1.36" of "v1.36.1" or "1.36"."""
    parts = version.lstrip("v").split(".")
    return ".".join(parts[:2])


def check_autoscaler_version(image_tag: str, kubernetes_version: str) -> None:
    if minor(image_tag) != minor(kubernetes_version):
        raise ValueError(f"cluster-autoscaler {image_tag} on Kubernetes {kubernetes_version}: its minor must be the "
                         "cluster's; set CHARTS['cluster-autoscaler']['image_tag'] in stacks/defaults.py")


def _node_affinity(processors: Sequence[str]) -> Dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": LABEL_PROCESSOR, "operator": "In", "values": sorted(processors)}]}]}}}


class AddOns(Construct):
    """Props in: the cluster, its system node group, the plan's node group specs.
    Out: `charts` {name: HelmChart}, `autoscaler_account`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.Cluster, cluster_name: str,
                 system_group: eks.Nodegroup, node_groups: Sequence[NodeGroupSpec],
                 neuron_scheduler: bool = False) -> None:
        super().__init__(scope, id)
        region = Stack.of(self).region
        self.charts: Dict[str, eks.HelmChart] = {}

        # cluster-autoscaler: IRSA role that may only resize the groups tagged as this cluster's.
        sa = cluster.add_service_account("ClusterAutoscalerSa", name="cluster-autoscaler", namespace="kube-system")
        sa.add_to_principal_policy(iam.PolicyStatement(
            actions=["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances",
                     "autoscaling:DescribeLaunchConfigurations", "autoscaling:DescribeScalingActivities",
                     "autoscaling:DescribeTags", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
                     "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceTypesFromInstanceRequirements",
                     "eks:DescribeNodegroup"],
            resources=["*"],
        ))
        sa.add_to_principal_policy(iam.PolicyStatement(
            actions=["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
            resources=["*"],
            conditions={"StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"}},
        ))
        self.autoscaler_account = sa
        ca = defaults.CHARTS["cluster-autoscaler"]
        check_autoscaler_version(ca["image_tag"], defaults.KUBERNETES_VERSION)
        self._chart(cluster, system_group, "cluster-autoscaler", namespace="kube-system", values={
            "cloudProvider": "aws",
            "awsRegion": region,
            "autoDiscovery": {"clusterName": cluster_name},
            "image": {"tag": ca["image_tag"]},
            "rbac": {"serviceAccount": {"create": False, "name": sa.service_account_name}},
            "extraArgs": {"balance-similar-node-groups": "true", "skip-nodes-with-system-pods": "false",
                          "expander": "least-waste"},
            "nodeSelector": SYSTEM_NODES,
        }, after=[sa])

        self._chart(cluster, system_group, "metrics-server", namespace="kube-system",
                    values={"nodeSelector": SYSTEM_NODES})

        # Envoy Gateway: the Gateway API implementation (its chart brings the Gateway API CRDs). Its
        # proxies (the data plane) are shaped by the EnvoyProxy resource the charts write.
        self._chart(cluster, system_group, "envoy-gateway", namespace=ENVOY_NAMESPACE, create_namespace=True,
                    values={"deployment": {"replicas": 2, "pod": {"nodeSelector": SYSTEM_NODES}}})

        processors = {spec.processor for spec in node_groups}
        if "gpu" in processors:
            self._chart(cluster, system_group, "nvidia-device-plugin", namespace="kube-system", values={
                "tolerations": [_toleration(PLAN_NODE_TAINT_KEY)],
                "affinity": _node_affinity(["gpu"]),
            })
        neuron = sorted(processors & {"inf1", "inf2"})
        if neuron:
            self._chart(cluster, system_group, "neuron", namespace="kube-system", values={
                "npd": {"enabled": False},
                "devicePlugin": {"enabled": True, "tolerations": [_toleration(PLAN_NODE_TAINT_KEY)],
                                 "affinity": _node_affinity(neuron)},
                "scheduler": {"enabled": neuron_scheduler},
            })

    def _chart(self, cluster: eks.Cluster, system_group: eks.Nodegroup, name: str, *, namespace: str,
               values: Dict, create_namespace: bool = False, after: List[Construct] | None = None) -> eks.HelmChart:
        pin = defaults.CHARTS[name]
        chart = eks.HelmChart(
            self, f"Chart-{name}",
            cluster=cluster, chart=pin["chart"], repository=pin["repository"], version=pin["version"],
            release=name, namespace=namespace, create_namespace=create_namespace, values=values,
            wait=True, timeout=Duration.minutes(15),
        )
        chart.node.add_dependency(system_group)
        for dep in after or []:
            chart.node.add_dependency(dep)
        self.charts[name] = chart
        return chart
