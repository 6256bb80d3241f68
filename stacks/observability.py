"""Observability and event-driven autoscaling add-ons: metrics, device metrics, container logs, KEDA.

One construct per concern (props in, resources out), composed by `Observability`, which stacks/platform.py
creates in the cluster stack beside the other add-ons (stacks/addons.py):

- `Prometheus`: kube-prometheus-stack (Prometheus Operator, Prometheus, Alertmanager, Grafana,
  kube-state-metrics, node-exporter) in the config's `monitoring_namespace`, which is the namespace the
  servers' NetworkPolicy admits for scraping. Prometheus selects PodMonitors, ServiceMonitors, Probes,
  ScrapeConfigs and PrometheusRules from every namespace, not only those labelled with its release;
  Grafana's dashboard sidecar reads dashboard ConfigMaps from every namespace. The release name is fixed:
  it names the Service `kube-prometheus-stack-prometheus` that charts.constants.prometheus_url (KEDA's
  ScaledObjects) points at.
- `ManagedPrometheus` (only with `observability.amp: true`): an Amazon Managed Service for Prometheus
  workspace and an IRSA role, allowed `aps:RemoteWrite` on that workspace alone, for Prometheus's
  ServiceAccount; Prometheus remote-writes to it with SigV4.
- `GpuMetrics` (only when the plan has gpu node groups): NVIDIA's DCGM exporter, a DaemonSet on the
  gpu nodes only, with its ServiceMonitor.
- `NeuronMetrics` (only when the plan has inf1/inf2 node groups): neuron-monitor with its Prometheus
  exporter, a DaemonSet on the Neuron nodes only, and a PodMonitor.
- `ContainerLogs`: aws-for-fluent-bit on every node, shipping container logs to one CloudWatch Logs group
  made here (KMS-encrypted, `observability.log_retention_days`), through an IRSA role that may only create
  streams in and write to that group; the chart's own log-group creation is off.
- `EventAutoscaling`: KEDA in namespace `keda`. Its Prometheus trigger needs no metrics-server (KEDA
  serves external.metrics.k8s.io itself); its cpu/memory triggers and the HPAs read metrics.k8s.io,
  which the metrics-server add-on (stacks/addons.py) serves.

Placement: the controllers and servers (operator, Prometheus, Alertmanager, Grafana, kube-state-metrics,
the admission-webhook Jobs, KEDA) run on the untainted system nodes, `nodeSelector modelfleet.io/pool:
system`, as every add-on in stacks/addons.py. Per-node agents must run where the nodes are: node-exporter
and Fluent Bit tolerate every taint (all nodes), DCGM exporter and neuron-monitor tolerate the plan-node
taint and select their processor's nodes, like the device plugins.

Per-node cost: config/instances.yaml `daemonset_overhead` counts every agent here: Fluent Bit (its
requests here are that table's 50m / 25 MiB), node-exporter (10m / 32 MiB requested here), and the larger
of DCGM exporter (100m / 128 MiB, the chart's) and neuron-monitor (250m / 128 MiB, the Neuron SDK
manifest's) on every node, since the figure is one per node. The planner leaves that room on every node,
so the agents schedule beside a full plan; none has a priority class that preempts a model server.

Storage: the cluster has no EBS CSI driver, so Prometheus keeps its TSDB in an emptyDir on its node
(`PROMETHEUS_STORAGE`: 7 days, at most 15 GB, a 20 GiB cap) and loses it when the pod moves; with `amp`
the workspace holds the long-term series (AMP's own retention, 150 days by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_aps as aps
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from charts.config import CLOUDWATCH_RETENTION_DAYS
from charts.config import Observability as ObservabilityConfig
from charts.constants import PLAN_NODE_TAINT_KEY, PROMETHEUS_SERVICE
from stacks.addons import SYSTEM_NODES
from stacks.irsa import service_account_principal
from stacks.sizing import LABEL_PROCESSOR, NEURON_PROCESSORS, NodeGroupSpec

# Pinned 2026-12-03: each the newest release in the project's published chart index or release tags (copies of
# August 2026). Check the release notes before an upgrade.
CHARTS: Dict[str, Dict[str, str]] = {
    # kube-prometheus-stack-88.5.3 (2026-08-21): Prometheus Operator v0.93.1, Grafana chart 12.11.1,
    # kube-state-metrics 8.4.0, prometheus-node-exporter 4.56.1.
    "kube-prometheus-stack": {"repository": "https://prometheus-community.github.io/helm-charts",
                              "chart": "kube-prometheus-stack", "version": "88.5.3"},
    # dcgm-exporter chart 4.8.2 (2026-05-06): DCGM 4.5.3, exporter 4.8.2 (image tag 4.5.3-4.8.2-distroless).
    "dcgm-exporter": {"repository": "https://nvidia.github.io/dcgm-exporter/helm-charts",
                      "chart": "dcgm-exporter", "version": "4.8.2"},
    # aws-for-fluent-bit chart 0.2.0 (2026-02-03, in the eks-charts index of 2026-08-03): AWS for Fluent Bit 3.2.1.
    "aws-for-fluent-bit": {"repository": "https://aws.github.io/eks-charts",
                           "chart": "aws-for-fluent-bit", "version": "0.2.0"},
    # KEDA chart v2.20.2 (2026-07-31): KEDA 2.20.2.
    "keda": {"repository": "https://kedacore.github.io/charts", "chart": "keda", "version": "2.20.2"},
}

# neuron-monitor's image and command as the Neuron SDK's own DaemonSet gives them
# (aws-neuron/aws-neuron-sdk src/k8/k8s-neuron-monitor-daemonset.yml, since Neuron SDK 2.22.0 and unchanged in
# the copy of 2026-08-21): the image's entrypoint runs `neuron-monitor | neuron-monitor-prometheus.py --port`.
NEURON_MONITOR_IMAGE = "public.ecr.aws/neuron/neuron-monitor:1.3.0"
NEURON_MONITOR_PORT = 8000
NEURON_MONITOR_COMMAND = ["/opt/bin/entrypoint.sh"]
NEURON_MONITOR_ARGS = ["--port", str(NEURON_MONITOR_PORT),
                       "--neuron-monitor-config", "/opt/aws/neuron/bin/neuron-monitor.conf"]
NEURON_MONITOR_LABELS = {"app.kubernetes.io/name": "neuron-monitor"}

# The release name fixes the Prometheus Service's name (`<release>-prometheus`), which the charts' ScaledObjects
# query through charts.constants.prometheus_url.
PROMETHEUS_RELEASE = "kube-prometheus-stack"
PROMETHEUS_SERVICE_ACCOUNT = f"{PROMETHEUS_RELEASE}-prometheus"
# Prometheus's TSDB (no EBS CSI driver in the cluster: an emptyDir on the system node's 50 GiB root volume).
PROMETHEUS_STORAGE = {"retention": "7d", "retentionSize": "15GB", "sizeLimit": "20Gi"}
PROMETHEUS_RESOURCES = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
# AWS's recommended queue settings for remote write to AMP.
AMP_QUEUE = {"maxSamplesPerSend": 1000, "maxShards": 200, "capacity": 2500}

FLUENT_BIT_NAMESPACE = "amazon-cloudwatch"
FLUENT_BIT_SERVICE_ACCOUNT = "aws-for-fluent-bit"
# config/instances.yaml daemonset_overhead's figures for it; the limit is the chart's.
FLUENT_BIT_RESOURCES = {"requests": {"cpu": "50m", "memory": "25Mi"}, "limits": {"memory": "250Mi"}}
NODE_EXPORTER_RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}
NEURON_MONITOR_RESOURCES = {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}

KEDA_NAMESPACE = "keda"

_RETENTION_NAMES = {1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS", 30: "ONE_MONTH",
                    60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS", 150: "FIVE_MONTHS", 180: "SIX_MONTHS",
                    365: "ONE_YEAR", 400: "THIRTEEN_MONTHS", 545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS",
                    1096: "THREE_YEARS", 1827: "FIVE_YEARS", 2192: "SIX_YEARS", 2557: "SEVEN_YEARS",
                    2922: "EIGHT_YEARS", 3288: "NINE_YEARS", 3653: "TEN_YEARS"}
if set(_RETENTION_NAMES) != set(CLOUDWATCH_RETENTION_DAYS):  # one list of CloudWatch's periods, checked at import
    raise RuntimeError("stacks/observability.py _RETENTION_NAMES must name every charts.config.CLOUDWATCH_RETENTION_DAYS")


def retention_days(days: int) -> logs.RetentionDays:
    if days not in _RETENTION_NAMES:
        raise ValueError(f"observability.log_retention_days {days} is not a CloudWatch Logs retention period; "
                         f"use one of {', '.join(map(str, sorted(_RETENTION_NAMES)))}")
    return getattr(logs.RetentionDays, _RETENTION_NAMES[days])


def container_log_group_name(cluster_name: str) -> str:
    """Beside EKS's own /aws/eks/<cluster>/cluster (control plane)."""
    return f"/aws/eks/{cluster_name}/containers"


# ---- values and objects: pure functions, tested without a synth -------------------------------------------

def tolerate_plan_nodes() -> List[Dict[str, str]]:
    return [{"key": PLAN_NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]


# A toleration with no key and operator Exists tolerates every taint: per-node agents that belong on all nodes.
TOLERATE_ALL = [{"operator": "Exists"}]


def processor_affinity(processors: Sequence[str]) -> Dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": LABEL_PROCESSOR, "operator": "In", "values": sorted(processors)}]}]}}}


@dataclass(frozen=True)
class RemoteWrite:
    """Where Prometheus also sends its samples (AMP), and the role its ServiceAccount assumes to sign them."""
    url: str
    region: str
    role_arn: str


def kube_prometheus_values(*, cluster_name: str, remote_write: Optional[RemoteWrite] = None) -> Dict[str, Any]:
    system = dict(SYSTEM_NODES)
    prometheus_spec: Dict[str, Any] = {
        "nodeSelector": system,
        # Every namespace's monitors and rules, not only those labelled release=kube-prometheus-stack.
        "podMonitorSelectorNilUsesHelmValues": False,
        "serviceMonitorSelectorNilUsesHelmValues": False,
        "ruleSelectorNilUsesHelmValues": False,
        "probeSelectorNilUsesHelmValues": False,
        "scrapeConfigSelectorNilUsesHelmValues": False,
        "retention": PROMETHEUS_STORAGE["retention"],
        "retentionSize": PROMETHEUS_STORAGE["retentionSize"],
        "storageSpec": {"emptyDir": {"sizeLimit": PROMETHEUS_STORAGE["sizeLimit"]}},
        "resources": PROMETHEUS_RESOURCES,
        "externalLabels": {"cluster": cluster_name},
    }
    service_account: Dict[str, Any] = {"create": True, "name": PROMETHEUS_SERVICE_ACCOUNT}
    if remote_write is not None:
        prometheus_spec["remoteWrite"] = [{"url": remote_write.url, "sigv4": {"region": remote_write.region},
                                           "queueConfig": dict(AMP_QUEUE)}]
        service_account["annotations"] = {"eks.amazonaws.com/role-arn": remote_write.role_arn}
    return {
        # EKS runs the control plane: its controller manager, scheduler and etcd cannot be scraped from inside,
        # and kube-proxy's metrics listen on 127.0.0.1 only; their monitors would only be targets that are down.
        "kubeControllerManager": {"enabled": False},
        "kubeScheduler": {"enabled": False},
        "kubeEtcd": {"enabled": False},
        "kubeProxy": {"enabled": False},
        "prometheusOperator": {"nodeSelector": system, "admissionWebhooks": {"patch": {"nodeSelector": system}}},
        "prometheus": {"serviceAccount": service_account, "prometheusSpec": prometheus_spec},
        "alertmanager": {"alertmanagerSpec": {"nodeSelector": system}},
        "grafana": {"nodeSelector": system, "persistence": {"enabled": False},
                    "sidecar": {"dashboards": {"enabled": True, "searchNamespace": "ALL"}}},
        "kube-state-metrics": {"nodeSelector": system},
        # A per-node agent: on every node (the plan nodes are the ones worth watching).
        "prometheus-node-exporter": {"tolerations": TOLERATE_ALL, "resources": NODE_EXPORTER_RESOURCES},
    }


def dcgm_exporter_values() -> Dict[str, Any]:
    return {
        "nodeSelector": {LABEL_PROCESSOR: "gpu"},
        "tolerations": tolerate_plan_nodes(),
        "serviceMonitor": {"enabled": True, "interval": "15s"},
        # Not the chart's system-node-critical: it must not preempt a model server on a node the plan filled.
        "priorityClassName": "",
    }


def fluent_bit_values(*, region: str, log_group_name: str, role_arn: str) -> Dict[str, Any]:
    return {
        "cloudWatchLogs": {"enabled": True, "region": region, "logGroupName": log_group_name,
                           "autoCreateGroup": False, "logStreamPrefix": "containers."},
        "cloudWatch": {"enabled": False},
        "serviceAccount": {"create": True, "name": FLUENT_BIT_SERVICE_ACCOUNT,
                           "annotations": {"eks.amazonaws.com/role-arn": role_arn}},
        "tolerations": TOLERATE_ALL,
        "resources": FLUENT_BIT_RESOURCES,
    }


def keda_values() -> Dict[str, Any]:
    # The top-level nodeSelector applies to the operator, the metrics API server and the webhooks.
    return {"nodeSelector": dict(SYSTEM_NODES)}


def neuron_monitor_objects(namespace: str, processors: Sequence[str]) -> List[Dict[str, Any]]:
    """The neuron-monitor DaemonSet (Neuron nodes of `processors` only) and the PodMonitor that scrapes it."""
    labels = dict(NEURON_MONITOR_LABELS)
    daemonset = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "neuron-monitor", "namespace": namespace, "labels": labels},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "affinity": processor_affinity(processors),
            "tolerations": tolerate_plan_nodes(),
            "containers": [{
                "name": "neuron-monitor", "image": NEURON_MONITOR_IMAGE,
                "command": NEURON_MONITOR_COMMAND, "args": NEURON_MONITOR_ARGS,
                "ports": [{"name": "metrics", "containerPort": NEURON_MONITOR_PORT}],
                "resources": NEURON_MONITOR_RESOURCES,
                "env": [{"name": "GOMEMLIMIT", "value": "160MiB"}],
                # It reads the Neuron devices and the driver's sysfs (the Neuron SDK's manifest runs it privileged).
                "securityContext": {"privileged": True},
            }],
        }}},
    }
    pod_monitor = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": "neuron-monitor", "namespace": namespace, "labels": labels},
        "spec": {"selector": {"matchLabels": labels},
                 "podMetricsEndpoints": [{"port": "metrics", "interval": "30s"}]},
    }
    return [daemonset, pod_monitor]


# ---- constructs ------------------------------------------------------------------------------------------

def _helm(scope: Construct, id: str, *, cluster: eks.ICluster, name: str, release: str, namespace: str,
          values: Dict[str, Any], create_namespace: bool, after: Sequence[Construct]) -> eks.HelmChart:
    pin = CHARTS[name]
    chart = eks.HelmChart(scope, id, cluster=cluster, chart=pin["chart"], repository=pin["repository"],
                          version=pin["version"], release=release, namespace=namespace,
                          create_namespace=create_namespace, values=values, wait=True, timeout=Duration.minutes(15))
    for dep in after:
        chart.node.add_dependency(dep)
    return chart


class ServiceAccountRole(Construct):
    """An IAM role only one Kubernetes ServiceAccount may assume (IRSA: the OIDC `sub` and `aud` conditions).
    The chart creates the ServiceAccount, annotated with `role.role_arn`. Out: `role`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, namespace: str, service_account: str,
                 description: str) -> None:
        super().__init__(scope, id)
        self.role = iam.Role(self, "Role", description=description, max_session_duration=Duration.hours(1),
                             assumed_by=service_account_principal(self, cluster, namespace, service_account))


class ManagedPrometheus(Construct):
    """Props in: cluster, cluster name, the namespace Prometheus runs in. Out: `workspace`, `role`,
    `remote_write` (URL, region, role ARN)."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, cluster_name: str, namespace: str) -> None:
        super().__init__(scope, id)
        region = Stack.of(self).region
        self.workspace = aps.CfnWorkspace(self, "Workspace", alias=cluster_name)
        writer = ServiceAccountRole(self, "Writer", cluster=cluster, namespace=namespace,
                                    service_account=PROMETHEUS_SERVICE_ACCOUNT,
                                    description=f"{cluster_name}: Prometheus remote write to its AMP workspace")
        self.role = writer.role
        self.role.add_to_policy(iam.PolicyStatement(
            sid="RemoteWrite", actions=["aps:RemoteWrite"], resources=[self.workspace.attr_arn]))
        # PrometheusEndpoint is https://aps-workspaces.<region>.amazonaws.com/workspaces/<id>/ (trailing slash).
        self.remote_write = RemoteWrite(url=f"{self.workspace.attr_prometheus_endpoint}api/v1/remote_write",
                                        region=region, role_arn=self.role.role_arn)


class Prometheus(Construct):
    """Props in: cluster, the system node group, namespace, optional remote write. Out: `chart`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, cluster_name: str,
                 system_group: eks.Nodegroup, namespace: str, remote_write: Optional[RemoteWrite],
                 after: Sequence[Construct] = ()) -> None:
        super().__init__(scope, id)
        self.chart = _helm(self, "Chart", cluster=cluster, name="kube-prometheus-stack", release=PROMETHEUS_RELEASE,
                           namespace=namespace, create_namespace=True,
                           values=kube_prometheus_values(cluster_name=cluster_name, remote_write=remote_write),
                           after=[system_group, *after])


class GpuMetrics(Construct):
    """DCGM exporter on the gpu nodes. Props in: cluster, namespace, the Prometheus chart (its CRDs). Out: `chart`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, namespace: str,
                 prometheus: eks.HelmChart) -> None:
        super().__init__(scope, id)
        self.chart = _helm(self, "Chart", cluster=cluster, name="dcgm-exporter", release="dcgm-exporter",
                           namespace=namespace, create_namespace=False, values=dcgm_exporter_values(),
                           after=[prometheus])


class NeuronMetrics(Construct):
    """neuron-monitor on the Neuron nodes. Props in: cluster, namespace, Neuron processors of the plan, the
    Prometheus chart (namespace and PodMonitor CRD). Out: `manifest`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, namespace: str,
                 processors: Sequence[str], prometheus: eks.HelmChart) -> None:
        super().__init__(scope, id)
        self.manifest = eks.KubernetesManifest(self, "Manifest", cluster=cluster,
                                               manifest=neuron_monitor_objects(namespace, processors))
        self.manifest.node.add_dependency(prometheus)


class ContainerLogs(Construct):
    """Props in: cluster, cluster name, retention, system group. Out: `log_group`, `key`, `role`, `chart`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, cluster_name: str, retention: int,
                 system_group: eks.Nodegroup, retain: bool = True) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        removal = RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY
        name = container_log_group_name(cluster_name)
        # Container logs can carry request text (error messages): a key of their own, usable by CloudWatch Logs
        # for this log group only.
        self.key = kms.Key(self, "Key", enable_key_rotation=True, removal_policy=removal,
                           description=f"{cluster_name}: container logs ({name})")
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchLogsForTheContainerLogGroup",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],  # in a key policy, "*" is this key
            conditions={"ArnEquals": {"kms:EncryptionContext:aws:logs:arn":
                                      f"arn:aws:logs:{stack.region}:{stack.account}:log-group:{name}"}},
        ))
        self.log_group = logs.LogGroup(self, "LogGroup", log_group_name=name, retention=retention_days(retention),
                                       encryption_key=self.key, removal_policy=removal)
        writer = ServiceAccountRole(self, "Writer", cluster=cluster, namespace=FLUENT_BIT_NAMESPACE,
                                    service_account=FLUENT_BIT_SERVICE_ACCOUNT,
                                    description=f"{cluster_name}: Fluent Bit writes container logs to {name}")
        self.role = writer.role
        # The log group's ARN attribute ends in ":*", which covers its streams (PutLogEvents acts on a stream).
        self.role.add_to_policy(iam.PolicyStatement(
            sid="WriteContainerLogs",
            actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[self.log_group.log_group_arn]))
        self.chart = _helm(self, "Chart", cluster=cluster, name="aws-for-fluent-bit", release="aws-for-fluent-bit",
                           namespace=FLUENT_BIT_NAMESPACE, create_namespace=True,
                           values=fluent_bit_values(region=stack.region, log_group_name=name,
                                                    role_arn=self.role.role_arn),
                           after=[system_group, self.log_group])


class EventAutoscaling(Construct):
    """KEDA on the system nodes. Props in: cluster, system group. Out: `chart`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, system_group: eks.Nodegroup) -> None:
        super().__init__(scope, id)
        self.chart = _helm(self, "Chart", cluster=cluster, name="keda", release="keda", namespace=KEDA_NAMESPACE,
                           create_namespace=True, values=keda_values(), after=[system_group])


class Observability(Construct):
    """Props in: the cluster, its system node group, the plan's node group specs, the monitoring namespace and
    the config's `observability` block. Out: `charts` {name: HelmChart}, `prometheus`, `amp` (or None),
    `gpu_metrics` (or None), `neuron_metrics` (or None), `logs`, `autoscaling`."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.Cluster, cluster_name: str,
                 system_group: eks.Nodegroup, node_groups: Sequence[NodeGroupSpec], monitoring_namespace: str,
                 config: ObservabilityConfig, retain: bool = True) -> None:
        super().__init__(scope, id)
        if f"{PROMETHEUS_RELEASE}-prometheus" != PROMETHEUS_SERVICE:
            raise ValueError(f"charts.constants.PROMETHEUS_SERVICE is {PROMETHEUS_SERVICE!r}, but release "
                             f"{PROMETHEUS_RELEASE!r} names its Service {PROMETHEUS_RELEASE}-prometheus: "
                             "change one to match the other")
        processors = {spec.processor for spec in node_groups}
        self.amp = (ManagedPrometheus(self, "Amp", cluster=cluster, cluster_name=cluster_name,
                                      namespace=monitoring_namespace) if config.amp else None)
        self.prometheus = Prometheus(self, "Prometheus", cluster=cluster, cluster_name=cluster_name,
                                     system_group=system_group, namespace=monitoring_namespace,
                                     remote_write=self.amp.remote_write if self.amp else None,
                                     after=[self.amp.role] if self.amp else [])
        self.charts: Dict[str, eks.HelmChart] = {"kube-prometheus-stack": self.prometheus.chart}
        self.gpu_metrics = None
        if "gpu" in processors:
            self.gpu_metrics = GpuMetrics(self, "GpuMetrics", cluster=cluster, namespace=monitoring_namespace,
                                          prometheus=self.prometheus.chart)
            self.charts["dcgm-exporter"] = self.gpu_metrics.chart
        neuron = sorted(processors & set(NEURON_PROCESSORS))
        self.neuron_metrics = (NeuronMetrics(self, "NeuronMetrics", cluster=cluster, namespace=monitoring_namespace,
                                             processors=neuron, prometheus=self.prometheus.chart) if neuron else None)
        self.logs = ContainerLogs(self, "ContainerLogs", cluster=cluster, cluster_name=cluster_name,
                                  retention=config.log_retention_days, system_group=system_group, retain=retain)
        self.charts["aws-for-fluent-bit"] = self.logs.chart
        self.autoscaling = EventAutoscaling(self, "Keda", cluster=cluster, system_group=system_group)
        self.charts["keda"] = self.autoscaling.chart
