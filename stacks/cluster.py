"""Cluster: EKS (aws_eks_v2) on Kubernetes 1.36, Auto Mode off; the plan's node groups apart.

- `default_capacity_type=NODEGROUP, default_capacity=0`: no EKS Auto Mode (its compute config is
  written disabled) and no default node group; every node group is declared here.
- Control-plane logging (all five types) into a log group made here first, with the environment's
  retention (EKS would otherwise create `/aws/eks/<name>/cluster` itself, kept forever); secrets
  encrypted with a KMS key of its own; endpoint public only from the configured CIDRs (private only
  when there are none: the README says how an operator reaches it).
- Access entries: the kubectl provider's role (aws_eks_v2's own), and the admin and read-only IAM roles
  that config/<env>.yaml names (`stacks.access`), with AmazonEKSClusterAdminPolicy and
  AmazonEKSAdminViewPolicy cluster-wide.
- The VPC CNI as a managed add-on with network policy enforcement on, created with
  `ResolveConflicts: OVERWRITE`: EKS has already bootstrapped a self-managed aws-node DaemonSet, and
  without it the add-on's creation fails on "Conflicts found".
- A small untainted system node group over 2 AZs (CoreDNS, controllers, Envoy) in the cluster stack;
  the plan's node groups (`PlanNodeGroups`) in a stack of their own, built with `eks.Nodegroup(...)`
  rather than `cluster.add_nodegroup_capacity(...)`: the latter adds aws_eks_v2's own (old, unpinned)
  Neuron device-plugin manifest whenever an inf1/inf2 type appears, and the add-ons install the Neuron
  Helm chart, so exactly one Neuron device plugin runs (stacks/addons.py).
- Every node group has a launch template of ours: IMDSv2 required, hop limit from its spec
  (stacks/sizing.py), an encrypted gp3 root volume.

Why the plan's node groups are a stack apart: CloudFormation waits for a managed node group to become
ACTIVE, and one whose instances cannot launch (an EC2 vCPU quota, no capacity of that type in the zones)
ends CREATE_FAILED, which rolls back the stack that holds it. In the cluster stack that would delete the
cluster; in `modelfleet-<env>-nodes` it rolls back only the node groups, and a deploy after the quota is
raised (`python -m stacks preflight` says which) creates them on the standing cluster.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk.lambda_layer_kubectl_v36 import KubectlV36Layer
from constructs import Construct

from stacks import defaults
from stacks.network import retention
from stacks.sizing import LABEL_POOL, LABEL_PROCESSOR, SYSTEM_DISK_GIB, SYSTEM_POOL, NodeGroupSpec

NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")
LOGGING = [eks.ClusterLoggingTypes.API, eks.ClusterLoggingTypes.AUDIT, eks.ClusterLoggingTypes.AUTHENTICATOR,
           eks.ClusterLoggingTypes.CONTROLLER_MANAGER, eks.ClusterLoggingTypes.SCHEDULER]
ADMIN_POLICY = "AmazonEKSClusterAdminPolicy"
READ_ONLY_POLICY = "AmazonEKSAdminViewPolicy"
# The root device of the AL2023 EKS AMIs (standard, NVIDIA and Neuron alike).
ROOT_DEVICE = "/dev/xvda"


def control_plane_log_group_name(cluster_name: str) -> str:
    """The log group EKS writes control-plane logs to (fixed by EKS)."""
    return f"/aws/eks/{cluster_name}/cluster"


def launch_template(scope: Construct, id: str, *, name: str, disk_gib: int, hop_limit: int) -> ec2.CfnLaunchTemplate:
    """A launch template for a managed node group: no AMI or instance type (the node group sets them,
    and EKS merges its bootstrap into it), IMDSv2 required, an encrypted gp3 root volume."""
    lt = ec2.CfnLaunchTemplate
    return lt(scope, id, launch_template_name=name, launch_template_data=lt.LaunchTemplateDataProperty(
        metadata_options=lt.MetadataOptionsProperty(
            http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=hop_limit),
        block_device_mappings=[lt.BlockDeviceMappingProperty(
            device_name=ROOT_DEVICE,
            ebs=lt.EbsProperty(volume_size=disk_gib, volume_type="gp3", encrypted=True, delete_on_termination=True))],
    ))


def _template_spec(lt: ec2.CfnLaunchTemplate) -> eks.LaunchTemplateSpec:
    return eks.LaunchTemplateSpec(id=lt.ref, version=lt.attr_latest_version_number)


class FleetCluster(Construct):
    """Props in: VPC, cluster name, endpoint CIDRs, system group size, log retention, operator roles.
    Out: `cluster`, `node_role`, `system_group`, `log_group`, `vpc_cni`, `access_entries`."""

    def __init__(self, scope: Construct, id: str, *, vpc: ec2.IVpc, cluster_name: str,
                 endpoint_cidrs: Sequence[str], system_instance_type: str, system_nodes: int,
                 system_max_nodes: int, log_retention_days: int, admin_role_arn: Optional[str] = None,
                 read_only_role_arn: Optional[str] = None, retain: bool = True) -> None:
        super().__init__(scope, id)
        removal = RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY
        self.secrets_key = kms.Key(self, "SecretsKey", enable_key_rotation=True,
                                   description=f"{cluster_name}: Kubernetes secrets envelope encryption",
                                   removal_policy=removal)
        self.log_group = logs.LogGroup(self, "ControlPlaneLogs", log_group_name=control_plane_log_group_name(cluster_name),
                                       retention=retention(log_retention_days), removal_policy=removal)
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
                version=getattr(eks.AlbControllerVersion, defaults.ALB_CONTROLLER_VERSION),
                # On the system nodes with the other add-ons; region and VPC come from aws_eks_v2's
                # values, so it needs no instance metadata.
                additional_helm_chart_values={"nodeSelector": {LABEL_POOL: SYSTEM_POOL}}),
        )
        # The log group first: created by EKS it would have no retention and collide with ours.
        self.cluster.node.add_dependency(self.log_group)

        # Network policy enforcement (the charts' NetworkPolicies do nothing without it), taking over
        # the aws-node DaemonSet EKS bootstrapped.
        self.vpc_cni = eks.Addon(self, "VpcCni", cluster=self.cluster, addon_name="vpc-cni",
                                 configuration_values=defaults.VPC_CNI_CONFIGURATION, preserve_on_delete=False)
        self.vpc_cni.node.default_child.add_property_override("ResolveConflicts", "OVERWRITE")

        self.access_entries: Dict[str, eks.AccessEntry] = {}
        for name, arn, policy in (("Admin", admin_role_arn, ADMIN_POLICY), ("ReadOnly", read_only_role_arn, READ_ONLY_POLICY)):
            if arn:
                self.access_entries[name] = eks.AccessEntry(
                    self, f"Access{name}", cluster=self.cluster, principal=arn,
                    access_policies=[eks.AccessPolicy.from_access_policy_name(
                        policy, access_scope_type=eks.AccessScopeType.CLUSTER)])

        self.node_role = iam.Role(self, "NodeRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
                                  description=f"{cluster_name}: managed node groups",
                                  managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(p)
                                                    for p in NODE_POLICIES])

        azs = vpc.availability_zones[:2]
        # Hop limit 1: no pod on the system nodes needs instance metadata (see stacks/sizing.py).
        system_template = launch_template(self, "SystemLaunchTemplate", name=f"{cluster_name}-system",
                                          disk_gib=SYSTEM_DISK_GIB, hop_limit=1)
        self.system_group = eks.Nodegroup(
            self, "NodegroupSystem",
            cluster=self.cluster,
            nodegroup_name=f"{cluster_name}-system",
            instance_types=[ec2.InstanceType(system_instance_type)],
            ami_type=eks.NodegroupAmiType.AL2023_X86_64_STANDARD,
            subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, availability_zones=azs),
            desired_size=system_nodes, min_size=system_nodes, max_size=system_max_nodes,
            labels={LABEL_POOL: SYSTEM_POOL},
            node_role=self.node_role,
            launch_template_spec=_template_spec(system_template),
            tags=autoscaler_tags(cluster_name),
        )


class PlanNodeGroups(Construct):
    """The plan's node groups (in their own stack: see the module's docstring).
    Props in: the cluster, its node role, the specs. Out: `node_groups` {spec name: Nodegroup}."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, cluster_name: str, node_role: iam.IRole,
                 node_groups: Sequence[NodeGroupSpec]) -> None:
        super().__init__(scope, id)
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.node_groups: Dict[str, eks.Nodegroup] = {}
        for spec in node_groups:
            template = launch_template(self, f"LaunchTemplate-{spec.name}", name=f"{cluster_name}-{spec.name}",
                                       disk_gib=spec.disk_gib, hop_limit=spec.imds_hop_limit)
            group = eks.Nodegroup(
                self, f"Nodegroup-{spec.name}",
                cluster=cluster,
                nodegroup_name=f"{cluster_name}-{spec.name}",
                instance_types=[ec2.InstanceType(spec.instance_type)],
                ami_type=getattr(eks.NodegroupAmiType, spec.ami_type),
                subnets=private,
                desired_size=spec.desired, min_size=spec.min_size, max_size=spec.max_size,
                labels=dict(spec.labels),
                taints=[eks.TaintSpec(key=t.key, value=t.value, effect=getattr(eks.TaintEffect, t.effect))
                        for t in spec.taints],
                node_role=node_role,
                launch_template_spec=_template_spec(template),
                tags={**autoscaler_tags(cluster_name), LABEL_PROCESSOR.replace("/", "-"): spec.processor},
            )
            self.node_groups[spec.name] = group


def autoscaler_tags(cluster_name: str) -> Dict[str, str]:
    # EKS puts these on the node groups' Auto Scaling groups itself; stated here for reviewers.
    return {"k8s.io/cluster-autoscaler/enabled": "true", f"k8s.io/cluster-autoscaler/{cluster_name}": "owned"}
