"""Cluster: EKS (aws_eks_v2) on Kubernetes 1.36, Auto Mode off, node groups sized from the plan.

- `default_capacity_type=NODEGROUP, default_capacity=0`: no EKS Auto Mode (its compute config is
  written disabled) and no default node group; every node group is declared here.
- Control-plane logging (all five types), secrets encrypted with a KMS key of its own, endpoint
  public only from the configured CIDRs (private only when there are none).
- The VPC CNI as a managed add-on with network policy enforcement on.
- A small untainted system node group over 2 AZs (CoreDNS, controllers, Envoy), then one managed
  node group per instance type of the plan, built with `eks.Nodegroup(...)` rather than
  `cluster.add_nodegroup_capacity(...)`: the latter adds aws_eks_v2's own (old, unpinned) Neuron
  device-plugin manifest whenever an inf1/inf2 type appears, and the add-ons install the Neuron Helm
  chart, so exactly one Neuron device plugin runs (stacks/addons.py).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk.lambda_layer_kubectl_v36 import KubectlV36Layer
from constructs import Construct

from stacks import defaults
from stacks.sizing import LABEL_POOL, LABEL_PROCESSOR, NodeGroupSpec

NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")
LOGGING = [eks.ClusterLoggingTypes.API, eks.ClusterLoggingTypes.AUDIT, eks.ClusterLoggingTypes.AUTHENTICATOR,
           eks.ClusterLoggingTypes.CONTROLLER_MANAGER, eks.ClusterLoggingTypes.SCHEDULER]


class FleetCluster(Construct):
    """Props in: VPC, cluster name, endpoint CIDRs, system group size, node group specs.
    Out: `cluster`, `node_role`, `system_group`, `node_groups` {spec name: Nodegroup}."""

    def __init__(self, scope: Construct, id: str, *, vpc: ec2.IVpc, cluster_name: str,
                 endpoint_cidrs: Sequence[str], system_instance_type: str, system_nodes: int,
                 system_max_nodes: int, node_groups: Sequence[NodeGroupSpec], retain_key: bool = True) -> None:
        super().__init__(scope, id)
        self.secrets_key = kms.Key(self, "SecretsKey", enable_key_rotation=True,
                                   description=f"{cluster_name}: Kubernetes secrets envelope encryption",
                                   removal_policy=RemovalPolicy.RETAIN if retain_key else RemovalPolicy.DESTROY)
        endpoint = (eks.EndpointAccess.PUBLIC_AND_PRIVATE.only_from(*endpoint_cidrs) if endpoint_cidrs
                    else eks.EndpointAccess.PRIVATE)
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.cluster = eks.Cluster(
            self, "Cluster",
            cluster_name=cluster_name,
            version=eks.KubernetesVersion.V1_36,
            vpc=vpc,
            vpc_subnets=[private],
            default_capacity_type=eks.DefaultCapacityType.NODEGROUP,
            default_capacity=0,
            endpoint_access=endpoint,
            secrets_encryption_key=self.secrets_key,
            cluster_logging=LOGGING,
            kubectl_provider_options=eks.KubectlProviderOptions(
                kubectl_layer=KubectlV36Layer(self, "KubectlLayer"),
                private_subnets=vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS).subnets,
            ),
            alb_controller=eks.AlbControllerOptions(
                version=getattr(eks.AlbControllerVersion, defaults.ALB_CONTROLLER_VERSION)),
        )
        # Network policy enforcement (the charts' NetworkPolicies do nothing without it).
        self.vpc_cni = eks.Addon(self, "VpcCni", cluster=self.cluster, addon_name="vpc-cni",
                                 configuration_values=defaults.VPC_CNI_CONFIGURATION, preserve_on_delete=False)

        self.node_role = iam.Role(self, "NodeRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
                                  description=f"{cluster_name}: managed node groups",
                                  managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(p)
                                                    for p in NODE_POLICIES])

        azs = vpc.availability_zones[:2]
        self.system_group = eks.Nodegroup(
            self, "NodegroupSystem",
            cluster=self.cluster,
            nodegroup_name=f"{cluster_name}-system",
            instance_types=[ec2.InstanceType(system_instance_type)],
            ami_type=eks.NodegroupAmiType.AL2023_X86_64_STANDARD,
            subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, availability_zones=azs),
            desired_size=system_nodes, min_size=system_nodes, max_size=system_max_nodes,
            labels={LABEL_POOL: "system"},
            node_role=self.node_role,
            tags=_autoscaler_tags(cluster_name),
        )
        self.node_groups: Dict[str, eks.Nodegroup] = {}
        for spec in node_groups:
            self.node_groups[spec.name] = eks.Nodegroup(
                self, f"Nodegroup-{spec.name}",
                cluster=self.cluster,
                nodegroup_name=f"{cluster_name}-{spec.name}",
                instance_types=[ec2.InstanceType(spec.instance_type)],
                ami_type=getattr(eks.NodegroupAmiType, spec.ami_type),
                subnets=private,
                desired_size=spec.desired, min_size=spec.min_size, max_size=spec.max_size,
                disk_size=spec.disk_gib,
                labels=dict(spec.labels),
                taints=[eks.TaintSpec(key=t.key, value=t.value, effect=getattr(eks.TaintEffect, t.effect))
                        for t in spec.taints],
                node_role=self.node_role,
                tags={**_autoscaler_tags(cluster_name), LABEL_PROCESSOR.replace("/", "-"): spec.processor},
            )

    @property
    def all_node_groups(self) -> List[eks.Nodegroup]:
        return [self.system_group, *self.node_groups.values()]


def _autoscaler_tags(cluster_name: str) -> Dict[str, str]:
    # EKS puts these on the node groups' Auto Scaling groups itself; stated here for reviewers.
    return {"k8s.io/cluster-autoscaler/enabled": "true", f"k8s.io/cluster-autoscaler/{cluster_name}": "owned"}
