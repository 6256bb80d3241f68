"""Defaults for the `stacks:` block of `config/<env>.yaml` (charts.config.StacksConfig), and pins.

`config/<env>.yaml` is read by one model (charts.config.EnvConfig). The account, the servers' role,
namespace, store, images and gateway come from its own fields; each key of its `stacks:` block that the
file leaves out is taken from `ENVIRONMENTS[<env>]`, then from `COMMON`.

The accounts in config/ are example accounts whose availability zones `cdk.context.json` holds: synth
needs no AWS credentials. For a real deployment put your accounts in `config/<env>.yaml` and add their
zones to `cdk.context.json` (`npx cdk context` after one `cdk synth` with credentials, or by hand).

Versions of what the stacks install into the cluster are pinned here, each with where it comes from.
"""
from __future__ import annotations

from typing import Any, Dict

KUBERNETES_VERSION = "1.36"

# Example account (a placeholder, never real) of the pipeline and the shared ECR repositories; the
# stages' placeholder accounts are config/<env>.yaml's irsa.account.
PIPELINE_ACCOUNT = "444444444444"
DEFAULT_REGION = "us-east-1"
ENVIRONMENT_NAMES = ("dev", "staging", "prod")

COMMON: Dict[str, Any] = {
    "region": DEFAULT_REGION,
    # The reviewed plan the stacks size node groups from and the charts render servers from: tracked
    # in git (plans/README.md says how each is made), so the pipeline finds it on a fresh clone.
    "plan": "plans/{env}.json",
    # EC2 families this environment may run (a plan that uses another one is refused at synth).
    "allowed_instance_families": ["c5", "g4dn", "g5", "inf1", "inf2"],
    # max size of a plan node group = ceil(count x burst_factor): room for the cluster autoscaler.
    "burst_factor": 2.0,
    # Public endpoint of the Kubernetes API reachable only from these CIDRs; none: private only.
    "endpoint_cidrs": [],
    "max_azs": 3,
    "nat_gateways": 3,
    "vpc_cidr": "10.64.0.0/16",
    # The small untainted system node group (priced in config/instances.yaml `platform`).
    "system_instance_type": "m5.large",
    "system_nodes": 2,
    "system_max_nodes": 4,
    # An internet-facing gateway (gateway.internal: false) needs both: TLS at the NLB, a client allowlist.
    "certificate_arn": None,
    "source_cidrs": [],
    # Smoke test after deployment (a Job in the cluster; see stacks/smoke.py).
    "smoke_test": True,
    # Image of the smoke Job: it runs `python -m loadtest smoke`; default the cpu server image (which
    # must then carry loadtest/).
    "smoke_image": None,
    "smoke_timeout_minutes": 10,
    "log_retention_days": 90,
}

ENVIRONMENTS: Dict[str, Dict[str, Any]] = {
    "dev": {"burst_factor": 2.0, "nat_gateways": 1},
    "staging": {"burst_factor": 1.5},
    # prod's plan is made with --min-replicas 2 (config/prod.yaml min_replicas).
    "prod": {"burst_factor": 1.5},
}

# The pipeline (CDK Pipelines, CodePipeline V2) and the shared stack (ECR) live in one account.
PIPELINE: Dict[str, Any] = {
    "account": PIPELINE_ACCOUNT,
    "region": DEFAULT_REGION,
    # CodeStar/CodeConnections connection to the repository (created once in the console).
    "connection_arn": (f"arn:aws:codeconnections:{DEFAULT_REGION}:{PIPELINE_ACCOUNT}:"
                       "connection/00000000-0000-0000-0000-000000000000"),
    "repository": "example-org/modelfleet",
    "branch": "main",
    # Account of the shared ECR repositories (the pipeline pushes there, the stages pull).
    "registry_account": PIPELINE_ACCOUNT,
    "stages": list(ENVIRONMENT_NAMES),
    "approval_before": ["prod"],
}

# Processor images: one ECR repository each in the shared stack, named by the last path component of
# config/<env>.yaml's images.<processor>.repository (the one source of image URIs).
ECR_KEEP_IMAGES = 50

# Add-ons, pinned. Chart versions: the projects' release pages (check them before a real upgrade).
CHARTS: Dict[str, Dict[str, str]] = {
    # cluster-autoscaler's minor must be the cluster's (KUBERNETES_VERSION): it is built against that
    # minor's scheduler. Releases cluster-autoscaler-1.36.0 (2026-07-01) and -1.36.1 (2026-07-22) exist,
    # but no chart release defaults to them yet: the newest chart, 9.59.0 (tag cluster-autoscaler-chart-
    # 9.59.0, 2026-07-21, appVersion 1.35.0), is pinned with image.tag set to v1.36.1. 9.59.0 is also the
    # chart that grants the CapacityQuota/CapacityBuffer RBAC the 1.36 autoscaler reads. A test checks
    # that the image's minor is the cluster's.
    "cluster-autoscaler": {"repository": "https://kubernetes.github.io/autoscaler",
                           "chart": "cluster-autoscaler", "version": "9.59.0",
                           "image_tag": "v1.36.1"},
    "metrics-server": {"repository": "https://kubernetes-sigs.github.io/metrics-server/",
                       "chart": "metrics-server", "version": "3.13.0"},
    # Envoy Gateway: Gateway API v1 implementation; the chart also installs the Gateway API CRDs.
    "envoy-gateway": {"repository": "oci://docker.io/envoyproxy/gateway-helm",
                      "chart": "gateway-helm", "version": "v1.7.4"},
    "nvidia-device-plugin": {"repository": "https://nvidia.github.io/k8s-device-plugin",
                             "chart": "nvidia-device-plugin", "version": "0.17.4"},
    # Neuron Helm chart 1.9.0 (Neuron SDK 2.31.0): device plugin + scheduler extension.
    "neuron": {"repository": "oci://public.ecr.aws/neuron/neuron-helm-chart",
               "chart": "neuron-helm-chart", "version": "1.9.0"},
}
# vCPUs of the system node group's instance types (the plan's types have theirs in
# config/instances.yaml); `python -m stacks preflight` adds them to the Standard quota family.
SYSTEM_INSTANCE_VCPU = {"m5.large": 2, "m5.xlarge": 4, "m5.2xlarge": 8, "m6i.large": 2, "m6i.xlarge": 4,
                        "m7i.large": 2, "m7i.xlarge": 4, "c5.large": 2, "c5.xlarge": 4}

# aws-load-balancer-controller comes from aws_eks_v2's AlbController (its IAM policy ships with it).
ALB_CONTROLLER_VERSION = "V3_2_2"

# The VPC CNI add-on with network policy enforcement (NetworkPolicies do nothing without it).
VPC_CNI_CONFIGURATION = {"enableNetworkPolicy": "true", "nodeAgent": {"enablePolicyEventLogs": "false"}}
