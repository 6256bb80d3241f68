"""Defaults for every setting the stacks read from `config/<env>.yaml`.

`config/<env>.yaml` is written for the charts (namespace, images, store, role, gateway...); the stacks
read the same file and take from here whatever it does not (yet) say. Each key below is looked up in
the environment's file first, then in `ENVIRONMENTS[<env>]`, then in `COMMON`.

Accounts are the example accounts whose availability zones `cdk.context.json` holds: synth needs no
AWS credentials. For a real deployment put your accounts in `config/<env>.yaml` and add their zones to
`cdk.context.json` (`npx cdk context` after one `cdk synth` with credentials, or by hand).

Versions of what the stacks install into the cluster are pinned here, each with where it comes from.
"""
from __future__ import annotations

from typing import Any, Dict

KUBERNETES_VERSION = "1.36"

# Example accounts (RFC-style placeholders, never real): one per stage, one for the pipeline and the
# shared ECR repositories.
PIPELINE_ACCOUNT = "444444444444"
# The same placeholders as config/<env>.yaml's irsa.account.
EXAMPLE_ACCOUNTS = {"dev": "111111111111", "staging": "222222222222", "prod": "333333333333"}
DEFAULT_REGION = "us-east-1"
ENVIRONMENT_NAMES = ("dev", "staging", "prod")

# Processor -> EC2 families the processor's node groups may use (the catalogue's processors).
PROCESSOR_FAMILIES = {"cpu": ("c5",), "gpu": ("g4dn", "g5"), "inf1": ("inf1",), "inf2": ("inf2",)}

COMMON: Dict[str, Any] = {
    "region": DEFAULT_REGION,
    # The plan the stacks size node groups from and the charts render servers from (`make demo`
    # writes out/plan.json). For the pipeline, commit a reviewed plan and name it here.
    "plan": "out/plan.json",
    "namespace": "modelfleet",
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
    # Model servers' IAM role (IRSA): its fixed name, which the charts' ServiceAccount annotation
    # names too; the ServiceAccount it trusts; the artifact prefix it may read.
    "serving_role_name": "modelfleet-{env}-server",
    "service_account": "modelfleet-server",
    "store_prefix": "store",
    # Gateway (Envoy Gateway, Gateway API) and its load balancer: internal NLB unless told.
    "gateway_name": "modelfleet",
    "gateway_port": 80,
    "internet_facing": False,
    "certificate_arn": None,
    "source_cidrs": [],
    # Image tag the servers run when config/<env>.yaml names none (the pipeline passes -c tag=<commit>).
    "image_tag": "0.1.0",
    # Smoke test after deployment (a Job in the cluster; see stacks/smoke.py).
    "smoke_test": True,
    # Image of the smoke Job: it runs `python -m loadtest smoke`; default the cpu server image (which
    # must then carry loadtest/).
    "smoke_image": None,
    "smoke_timeout_minutes": 10,
    "log_retention_days": 90,
}

ENVIRONMENTS: Dict[str, Dict[str, Any]] = {
    "dev": {"account": EXAMPLE_ACCOUNTS["dev"], "burst_factor": 2.0, "nat_gateways": 1,
            "allowed_instance_families": ["c5", "g4dn", "g5", "inf1", "inf2"]},
    "staging": {"account": EXAMPLE_ACCOUNTS["staging"], "burst_factor": 1.5},
    # prod's plan is made with --min-replicas 2 (config/prod.yaml min_replicas), so it has its own file.
    "prod": {"account": EXAMPLE_ACCOUNTS["prod"], "burst_factor": 1.5, "plan": "out/plan-prod.json"},
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

# Processor images: one ECR repository each in the shared stack (names as in config/<env>.yaml's
# images.<processor>.repository, whose last path component is taken when present).
IMAGE_REPOSITORIES = {p: f"modelfleet-server-{p}" for p in ("cpu", "gpu", "inf1", "inf2")}
ECR_KEEP_IMAGES = 50

# Add-ons, pinned. Chart versions: the projects' release pages (check them before a real upgrade).
CHARTS: Dict[str, Dict[str, str]] = {
    "cluster-autoscaler": {"repository": "https://kubernetes.github.io/autoscaler",
                           "chart": "cluster-autoscaler", "version": "9.52.1",
                           "image_tag": "v1.34.1"},
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
# aws-load-balancer-controller comes from aws_eks_v2's AlbController (its IAM policy ships with it).
ALB_CONTROLLER_VERSION = "V3_2_2"

# The VPC CNI add-on with network policy enforcement (NetworkPolicies do nothing without it).
VPC_CNI_CONFIGURATION = {"enableNetworkPolicy": "true", "nodeAgent": {"enablePolicyEventLogs": "false"}}
