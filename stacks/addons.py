"""Add-ons: cluster-autoscaler (IRSA), metrics-server, Envoy Gateway, NVIDIA and Neuron device plugins.

aws-load-balancer-controller is aws_eks_v2's own `AlbController` (IRSA, its IAM policy shipped with
aws-cdk-lib), switched on in stacks/cluster.py; it turns the Envoy proxies' LoadBalancer Service into
an NLB (internal unless the environment says internet-facing). Each chart is pinned in
stacks/defaults.py. Every add-on runs on the untainted system nodes except the device plugins, which
tolerate their accelerator's taint and select their processor's nodes.

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

from charts.constants import GPU_TAINT_KEY, NEURON_TAINT_KEY
from stacks import defaults
from stacks.sizing import LABEL_PROCESSOR, NodeGroupSpec

ENVOY_NAMESPACE = "envoy-gateway-system"


def _toleration(key: str) -> Dict[str, str]:
    return {"key": key, "operator": "Exists", "effect": "NoSchedule"}


def _node_affinity(processors: Sequence[str]) -> Dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": LABEL_PROCESSOR, "operator": "In", "values": sorted(processors)}]}]}}}


class AddOns(Construct):
    """Props in: the cluster, its system node group, the plan's node group specs.
    Out: `charts` {name: HelmChart}, `autoscaler_account`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.Cluster, cluster_name: str,
                 system_group: eks.Nodegroup, node_groups: Sequence[NodeGroupSpec]) -> None:
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
        self._chart(cluster, system_group, "cluster-autoscaler", namespace="kube-system", values={
            "cloudProvider": "aws",
            "awsRegion": region,
            "autoDiscovery": {"clusterName": cluster_name},
            "image": {"tag": ca["image_tag"]},
            "rbac": {"serviceAccount": {"create": False, "name": sa.service_account_name}},
            "extraArgs": {"balance-similar-node-groups": "true", "skip-nodes-with-system-pods": "false",
                          "expander": "least-waste"},
        }, after=[sa])

        self._chart(cluster, system_group, "metrics-server", namespace="kube-system", values={})

        # Envoy Gateway: the Gateway API implementation (its chart brings the Gateway API CRDs).
        self._chart(cluster, system_group, "envoy-gateway", namespace=ENVOY_NAMESPACE, create_namespace=True,
                    values={"deployment": {"replicas": 2}})

        processors = {spec.processor for spec in node_groups}
        if "gpu" in processors:
            self._chart(cluster, system_group, "nvidia-device-plugin", namespace="kube-system", values={
                "tolerations": [_toleration(GPU_TAINT_KEY)],
                "affinity": _node_affinity(["gpu"]),
            })
        neuron = sorted(processors & {"inf1", "inf2"})
        if neuron:
            self._chart(cluster, system_group, "neuron", namespace="kube-system", values={
                "npd": {"enabled": False},
                "devicePlugin": {"enabled": True, "tolerations": [_toleration(NEURON_TAINT_KEY)],
                                 "affinity": _node_affinity(neuron)},
                "scheduler": {"enabled": True},
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
