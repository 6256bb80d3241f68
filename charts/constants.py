"""Names and numbers that charts/ and stacks/ must agree on. No cdk8s import here: stacks/ reads these
without starting jsii.

Node group taints (the stacks put them on node groups; the charts tolerate them):

| processor  | taint key                 | effect     |
| ---------- | ------------------------- | ---------- |
| inf1, inf2 | `aws.amazon.com/neuron`   | NoSchedule |
| gpu        | `nvidia.com/gpu`          | NoSchedule |
| cpu        | none                      |            |

The pods tolerate the key with `operator: Exists`, so any taint value works (the stacks use "true").
"""
from __future__ import annotations

from typing import Dict, Optional

NEURON_TAINT_KEY = "aws.amazon.com/neuron"
GPU_TAINT_KEY = "nvidia.com/gpu"
TAINT_EFFECT = "NoSchedule"
TAINT_VALUE = "true"
TAINT_KEYS: Dict[str, Optional[str]] = {"cpu": None, "gpu": GPU_TAINT_KEY, "inf1": NEURON_TAINT_KEY, "inf2": NEURON_TAINT_KEY}

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
SERVER_LABEL = "modelfleet.io/server"
PROCESSOR_LABEL = "modelfleet.io/processor"
MODELS_DIGEST_ANNOTATION = "modelfleet.io/models-sha256"

PORT = 8080
PORT_NAME = "http"
CONTAINER_NAME = "server"
SERVICE_ACCOUNT = "modelfleet-server"
RUN_AS_UID = 10001  # the serving images' user (serving/docker/Dockerfile.*)
MODEL_CACHE_DIR = "/var/cache/modelfleet"
GRACE_SECONDS = 25  # the server's drain time after SIGTERM (serving's GRACE_SECONDS default)

ENVOY_GATEWAY_NAMESPACE = "envoy-gateway-system"
ENVOY_GATEWAY_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"

# Gateway API v1.6.1 HTTPRoute limits (../shared/crds/README.md): the 128 is a CEL rule that schema
# validation does not run, so routes are split here and a test counts.
MAX_MATCHES_PER_ROUTE = 128
MAX_MATCHES_PER_RULE = 64
MAX_RULES_PER_ROUTE = 16
ROUTE_PREFIXES = ("/predictions/", "/v2/models/")

# Helm: a release is stored in one Secret (1 MiB). Shards hold at most this many bytes of templates,
# so template + rendered manifest stay below ~0.5 MiB before gzip even in the worst case.
SHARD_TEMPLATE_BUDGET_BYTES = 200 * 1024
HELM_RELEASE_LIMIT_BYTES = 1024 * 1024
