"""Names and numbers that charts/ and stacks/ must agree on. No cdk8s import here: stacks/ reads these
without starting jsii.

Node group taints: the stacks put `modelfleet.io/plan-node=<processor>:NoSchedule` on every plan node
group (cpu too) and the servers tolerate it (`operator: Equal`, value their processor): only the servers
of that processor land there, and add-ons (CoreDNS, controllers, Envoy), which tolerate none of it, stay on
the untainted system node group. A DaemonSet that must run on plan nodes (a device plugin) tolerates the
key with `operator: Exists`.
"""
from __future__ import annotations

from typing import Dict, Optional

# The pod contract's numbers and the routed path prefixes are the contracts' own; re-exported for the stacks.
from contracts.pod import GRACE_SECONDS, MODEL_CACHE_DIR, PORT, SERVER_LABEL  # noqa: F401
from contracts.routes import ROUTE_PREFIXES  # noqa: F401

PLAN_NODE_TAINT_KEY = "modelfleet.io/plan-node"
TAINT_EFFECT = "NoSchedule"
TAINT_KEYS: Dict[str, str] = {p: PLAN_NODE_TAINT_KEY for p in ("cpu", "gpu", "inf1", "inf2")}
# The plan-node taint's value per processor (the processor itself).
TAINT_VALUES: Dict[str, str] = {p: p for p in TAINT_KEYS}
# The node label of the untainted system node group (the stacks' stacks.sizing LABEL_POOL / SYSTEM_POOL):
# the Envoy proxies select it.
POOL_LABEL = "modelfleet.io/pool"
SYSTEM_POOL = "system"


def plan_node_taint(processor: str) -> tuple[str, str, str]:
    """(key, value, effect) of the taint on every plan node group of `processor`."""
    return PLAN_NODE_TAINT_KEY, TAINT_VALUES[processor], TAINT_EFFECT


# kube-prometheus-stack's Prometheus Service (release name kube-prometheus-stack) in the monitoring namespace.
PROMETHEUS_SERVICE = "kube-prometheus-stack-prometheus"
PROMETHEUS_PORT = 9090


def prometheus_url(namespace: str) -> str:
    """Where Prometheus answers inside the cluster (KEDA's prometheus trigger queries it)."""
    return f"http://{PROMETHEUS_SERVICE}.{namespace}.svc:{PROMETHEUS_PORT}"


# Extended resources the device plugins advertise (one device: an Inferentia chip or a GPU).
ACCELERATOR_RESOURCE: Dict[str, Optional[str]] = {
    "cpu": None, "gpu": "nvidia.com/gpu", "inf1": "aws.amazon.com/neuron", "inf2": "aws.amazon.com/neuron",
}

INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
HOSTNAME_LABEL = "kubernetes.io/hostname"
ZONE_LABEL = "topology.kubernetes.io/zone"

# Labels on every per-server object; SERVER_LABEL alone selects a server's pods.
PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "modelfleet"
NAME_LABEL = "app.kubernetes.io/name"
NAME = "modelfleet-server"
PROCESSOR_LABEL = "modelfleet.io/processor"
MODELS_DIGEST_ANNOTATION = "modelfleet.io/models-sha256"

PORT_NAME = "http"
CONTAINER_NAME = "server"
SERVICE_ACCOUNT = "modelfleet-server"
RUN_AS_UID = 10001  # the serving images' user (serving/docker/Dockerfile.*)

ENVOY_GATEWAY_NAMESPACE = "envoy-gateway-system"
ENVOY_GATEWAY_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
# The Envoy proxies in front of the whole fleet: at least two, spread over zones and nodes, on the system
# node group (they tolerate no plan-node taint). Their HPA's maximum fits that group's default maximum
# (stacks/defaults.py system_max_nodes, 4): one proxy per node at most there, two per node before that.
ENVOY_PROXY_MIN_REPLICAS = 2
ENVOY_PROXY_MAX_REPLICAS = 4
ENVOY_PROXY_CPU_TARGET_PERCENT = 60
ENVOY_PROXY_REQUESTS = {"cpu": "250m", "memory": "512Mi"}
ENVOY_PROXY_MEMORY_LIMIT = "1Gi"
# The labels Envoy Gateway gives every proxy pod of a Gateway (internal/infrastructure/kubernetes/proxy).
ENVOY_PROXY_POD_LABELS = {"app.kubernetes.io/name": "envoy", "app.kubernetes.io/component": "proxy",
                          "app.kubernetes.io/managed-by": "envoy-gateway"}
ENVOY_OWNING_GATEWAY_NAME_LABEL = "gateway.envoyproxy.io/owning-gateway-name"
ENVOY_OWNING_GATEWAY_NAMESPACE_LABEL = "gateway.envoyproxy.io/owning-gateway-namespace"

# Gateway API v1.6.1 HTTPRoute limits (../shared/crds/README.md): the 128 is a CEL rule that schema
# validation does not run, so routes are split here and a test counts. The third limit, 16 rules a route, is
# the schema's maxItems and never binds: a route of 128 matches over the two prefixes has 2 rules of 64.
MAX_MATCHES_PER_ROUTE = 128
MAX_MATCHES_PER_RULE = 64

# Helm: a release is stored in one Secret (1 MiB). Shards hold at most this many bytes of templates,
# so template + rendered manifest stay below ~0.5 MiB before gzip even in the worst case.
SHARD_TEMPLATE_BUDGET_BYTES = 200 * 1024
HELM_RELEASE_LIMIT_BYTES = 1024 * 1024

# kube-prometheus-stack's Prometheus selects PodMonitors and PrometheusRules by `release: <its Helm release>`
# (podMonitorSelectorNilUsesHelmValues and ruleSelectorNilUsesHelmValues are true by default): every monitoring
# object carries this label, so install the stack as release "kube-prometheus-stack" (or make it select all).
MONITORING_RELEASE_LABEL: Dict[str, str] = {"release": "kube-prometheus-stack"}
# The label kube-prometheus-stack's Grafana sidecar loads dashboards by (its default, in every namespace).
GRAFANA_DASHBOARD_LABEL: Dict[str, str] = {"grafana_dashboard": "1"}
