"""One plan server: Deployment, Service, ConfigMap, HPA or KEDA ScaledObject, PodDisruptionBudget and its HTTPRoutes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from cdk8s_plus_36 import k8s
from constructs import Construct

from charts import constants as c
from charts import naming
from charts.autoscaling import SCALE_DOWN_STABILIZATION_SECONDS, KedaScaledObject, QueueScaling, scaled_object_spec
from charts.routes import ServerRoutes, ServerRoutesProps
from contracts import Server
from contracts.pod import pod_env


@dataclass(frozen=True)
class StartupBudget:
    base_seconds: float = 120
    seconds_per_model: float = 2.0
    load_mib_per_second: float = 50.0
    period_seconds: int = 10


@dataclass(frozen=True)
class ModelServerProps:
    server: Server
    namespace: str
    image: str  # repository:tag
    store_uri: str
    gateway_name: str
    gateway_host: str
    hpa_max: int  # already cut to what the node group can hold (naming.hpa_max)
    cpu_target_percent: int = 70
    startup: StartupBudget = StartupBudget()
    service_account: str = c.SERVICE_ACCOUNT
    queue_scaling: Optional[QueueScaling] = None  # set: a KEDA ScaledObject on requests in flight, not the CPU HPA


def _q(value: str) -> k8s.Quantity:
    return k8s.Quantity.from_string(value)


def _port() -> k8s.IntOrString:
    return k8s.IntOrString.from_string(c.PORT_NAME)


def tolerations(processor: str) -> List[k8s.Toleration]:
    """The plan-node taint of this processor's node groups, its value only: a cpu pod must not land on a gpu
    node (charts.constants)."""
    key, value, effect = c.plan_node_taint(processor)
    return [k8s.Toleration(key=key, operator="Equal", value=value, effect=effect)]


def env_vars(server: Server, store_uri: str, config_map: str) -> List[k8s.EnvVar]:
    """The pod contract's environment (contracts.pod); MODEL_IDS comes from the server's ConfigMap."""
    return [k8s.EnvVar(name=name, value_from=k8s.EnvVarSource(config_map_key_ref=k8s.ConfigMapKeySelector(
                name=config_map, key=name))) if name == "MODEL_IDS" else k8s.EnvVar(name=name, value=value)
            for name, value in pod_env(server, store_uri).items()]


def resources(server: Server) -> k8s.ResourceRequirements:
    """Requests from the plan; memory limited at the request (the plan packed nodes by it). No CPU limit:
    CFS throttling adds tail latency, and the request already reserves the plan's share. An accelerator
    (an extended resource) must have equal request and limit."""
    req = server.requests
    requests = {"cpu": _q(f"{req.cpu_m}m"), "memory": _q(f"{req.memory_mib}Mi")}
    limits = {"memory": _q(f"{req.memory_mib}Mi")}
    if req.accelerator is not None:
        # from_number: a string quantity for an extended resource is fine too, but a JsonPatch is not (it serialises to null).
        requests[req.accelerator.name] = k8s.Quantity.from_number(req.accelerator.count)
        limits[req.accelerator.name] = k8s.Quantity.from_number(req.accelerator.count)
    return k8s.ResourceRequirements(requests=requests, limits=limits)


def spread(server: Server) -> List[k8s.TopologySpreadConstraint] | None:
    """More than one replica: over nodes (strict where the plan put the replicas on distinct instances) and
    over zones (preferred: a zone without free capacity must not stop a rollout)."""
    if server.replicas <= 1:
        return None
    selector = k8s.LabelSelector(match_labels=naming.server_selector(server.id))
    strict = naming.spread_hostname_strict(server.replicas, (p.instance_index for p in server.placements))
    return [
        k8s.TopologySpreadConstraint(
            max_skew=1, topology_key=c.HOSTNAME_LABEL, label_selector=selector, match_label_keys=["pod-template-hash"],
            when_unsatisfiable="DoNotSchedule" if strict else "ScheduleAnyway"),
        k8s.TopologySpreadConstraint(
            max_skew=1, topology_key=c.ZONE_LABEL, label_selector=selector, match_label_keys=["pod-template-hash"],
            when_unsatisfiable="ScheduleAnyway"),
    ]


class ModelServer(Construct):
    """Props in (a plan server and where it runs), the server's Kubernetes objects out."""

    def __init__(self, scope: Construct, id: str, props: ModelServerProps) -> None:
        super().__init__(scope, id)
        s, ns = props.server, props.namespace
        labels = naming.server_labels(s.id, s.processor)
        selector = naming.server_selector(s.id)
        cm_name = naming.configmap_name(s.id)

        def meta(name: str) -> k8s.ObjectMeta:
            return k8s.ObjectMeta(name=name, namespace=ns, labels=labels)

        self.config_map = k8s.KubeConfigMap(self, "models", metadata=meta(cm_name),
                                            data={"MODEL_IDS": pod_env(s, props.store_uri)["MODEL_IDS"]})

        st = props.startup
        threshold = naming.startup_failure_threshold(
            len(s.models), s.memory_budget_mib, base_seconds=st.base_seconds, seconds_per_model=st.seconds_per_model,
            load_mib_per_second=st.load_mib_per_second, period_seconds=st.period_seconds)
        http = k8s.HttpGetAction
        container = k8s.Container(
            name=c.CONTAINER_NAME,
            image=props.image,
            # Tags are immutable (the config refuses "latest"): a node that has the image need not ask ECR again.
            image_pull_policy="IfNotPresent",
            ports=[k8s.ContainerPort(name=c.PORT_NAME, container_port=c.PORT, protocol="TCP")],
            env=env_vars(s, props.store_uri, cm_name),
            resources=resources(s),
            startup_probe=k8s.Probe(http_get=http(path="/readyz", port=_port()), period_seconds=st.period_seconds,
                                    failure_threshold=threshold, timeout_seconds=5),
            readiness_probe=k8s.Probe(http_get=http(path="/readyz", port=_port()), period_seconds=5,
                                      failure_threshold=3, timeout_seconds=3),
            liveness_probe=k8s.Probe(http_get=http(path="/healthz", port=_port()), period_seconds=10,
                                     failure_threshold=3, timeout_seconds=5),
            security_context=k8s.SecurityContext(
                allow_privilege_escalation=False, privileged=False, read_only_root_filesystem=True,
                run_as_non_root=True, run_as_user=c.RUN_AS_UID, run_as_group=c.RUN_AS_UID,
                capabilities=k8s.Capabilities(drop=["ALL"]),
                seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault")),
            volume_mounts=[k8s.VolumeMount(name="model-cache", mount_path=c.MODEL_CACHE_DIR),
                           k8s.VolumeMount(name="tmp", mount_path="/tmp")],
        )
        # Bundles on disk are about the size of the models in host memory; room for two of each.
        cache_limit = f"{max(1024, 2 * s.memory_budget_mib)}Mi"
        pod = k8s.PodSpec(
            containers=[container],
            service_account_name=props.service_account,
            # The IRSA webhook mounts its own projected token; the API token is not needed.
            automount_service_account_token=False,
            node_selector={c.INSTANCE_TYPE_LABEL: s.instance_type},
            tolerations=tolerations(s.processor),
            topology_spread_constraints=spread(s),
            termination_grace_period_seconds=c.GRACE_SECONDS + 15,
            security_context=k8s.PodSecurityContext(
                run_as_non_root=True, run_as_user=c.RUN_AS_UID, run_as_group=c.RUN_AS_UID, fs_group=c.RUN_AS_UID,
                seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault")),
            volumes=[k8s.Volume(name="model-cache", empty_dir=k8s.EmptyDirVolumeSource(size_limit=_q(cache_limit))),
                     k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=_q("1Gi")))],
        )
        self.deployment = k8s.KubeDeployment(
            self, "deployment", metadata=meta(s.id),
            # No replicas: the HPA (or the one KEDA makes for the ScaledObject) owns the count (its minimum is
            # the plan's replicas). Helm 4 applies server-side, and a replicas field here would conflict with the
            # HPA's field manager on the first upgrade after a scale-out. A new Deployment starts at one pod until
            # the HPA raises it.
            spec=k8s.DeploymentSpec(
                revision_history_limit=3,
                # A pod may load for the whole startup budget before the rollout counts as stuck.
                progress_deadline_seconds=threshold * st.period_seconds + 300,
                # Surge, never fewer: a single-replica server keeps serving while its successor loads.
                strategy=k8s.DeploymentStrategy(type="RollingUpdate", rolling_update=k8s.RollingUpdateDeployment(
                    max_surge=k8s.IntOrString.from_number(1), max_unavailable=k8s.IntOrString.from_number(0))),
                selector=k8s.LabelSelector(match_labels=selector),
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=labels, annotations={
                        # Sorted: only a change of the model set rolls the pods, not a new order.
                        c.MODELS_DIGEST_ANNOTATION: naming.models_digest(sorted(s.models))}),
                    spec=pod)))

        self.service = k8s.KubeService(
            self, "service", metadata=meta(s.id),
            spec=k8s.ServiceSpec(type="ClusterIP", selector=selector, ports=[
                k8s.ServicePort(name=c.PORT_NAME, port=c.PORT, target_port=_port(), protocol="TCP")]))

        low, high = naming.hpa_bounds(s.replicas, props.hpa_max)
        # One autoscaler per Deployment, never two (they would fight over its replicas). On cpu servers CPU is
        # the inference load, and metrics-server alone shows it to the HPA; on gpu/inf1/inf2 the device does the
        # work and host CPU barely moves, so they scale on requests in flight through KEDA (charts.autoscaling).
        self.hpa: Optional[k8s.KubeHorizontalPodAutoscalerV2] = None
        self.scaled_object: Optional[KedaScaledObject] = None
        if props.queue_scaling is not None:
            self.scaled_object = KedaScaledObject(self, "scaledobject", name=s.id, namespace=ns, labels=labels,
                                                  spec=scaled_object_spec(s.id, ns, low, high, props.queue_scaling))
        else:
            self.hpa = k8s.KubeHorizontalPodAutoscalerV2(
                self, "hpa", metadata=meta(s.id),
                spec=k8s.HorizontalPodAutoscalerSpecV2(
                    scale_target_ref=k8s.CrossVersionObjectReferenceV2(api_version="apps/v1", kind="Deployment", name=s.id),
                    min_replicas=low, max_replicas=high,
                    metrics=[k8s.MetricSpecV2(type="Resource", resource=k8s.ResourceMetricSourceV2(
                        name="cpu", target=k8s.MetricTargetV2(type="Utilization", average_utilization=props.cpu_target_percent)))],
                    behavior=k8s.HorizontalPodAutoscalerBehaviorV2(
                        scale_down=k8s.HpaScalingRulesV2(stabilization_window_seconds=SCALE_DOWN_STABILIZATION_SECONDS))))

        # maxUnavailable 1: a drain may always evict one pod, so a single-replica server never blocks it.
        self.pdb = k8s.KubePodDisruptionBudget(
            self, "pdb", metadata=meta(s.id),
            spec=k8s.PodDisruptionBudgetSpec(max_unavailable=k8s.IntOrString.from_number(1),
                                             selector=k8s.LabelSelector(match_labels=selector),
                                             unhealthy_pod_eviction_policy="AlwaysAllow"))

        self.routes = ServerRoutes(self, "routes", ServerRoutesProps(
            server_id=s.id, models=tuple(s.models), namespace=ns, labels=labels,
            gateway_name=props.gateway_name, gateway_host=props.gateway_host))
