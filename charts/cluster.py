"""Cluster-wide objects, small enough to go inline (add_cdk8s_chart): namespace, ServiceAccount (IRSA),
NetworkPolicy, GatewayClass, EnvoyProxy (the NLB, and the proxies: spread, autoscaled, budgeted) and Gateway."""
from __future__ import annotations

from dataclasses import dataclass

from cdk8s_plus_36 import k8s
from constructs import Construct

from charts import constants as c
from charts import gateway_api as gw


@dataclass(frozen=True)
class ClusterWideProps:
    namespace: str
    role_arn: str  # may be a CDK token when the stacks build this construct inline
    monitoring_namespace: str
    gateway_name: str
    gateway_class_name: str
    envoy_proxy_name: str
    gateway_host: str
    gateway_port: int = 80
    internal: bool = True


def nlb_annotations(internal: bool) -> dict:
    """The AWS Load Balancer Controller's annotations for Envoy's Service: an NLB with IP targets."""
    return {
        "service.beta.kubernetes.io/aws-load-balancer-type": "external",
        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal" if internal else "internet-facing",
        "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
    }


def envoy_pod_selector(gateway_name: str, gateway_namespace: str) -> dict:
    """What selects the proxy pods of this Gateway (the labels Envoy Gateway puts on them)."""
    return {**c.ENVOY_PROXY_POD_LABELS, c.ENVOY_OWNING_GATEWAY_NAME_LABEL: gateway_name,
            c.ENVOY_OWNING_GATEWAY_NAMESPACE_LABEL: gateway_namespace}


def envoy_provider(props: ClusterWideProps) -> gw.EnvoyProxyKubernetesProvider:
    """Envoy's Service (the NLB), and its Deployment run as the fleet's front door: two or more proxies on the
    system node group, spread over its zones and nodes, requests so the scheduler reserves room, an HPA on CPU and a PDB that lets a drain
    take one proxy at a time. nodeTaintsPolicy Honor: zones holding only tainted plan nodes, where no proxy
    may go, do not count as empty zones (they would hold every proxy Pending)."""
    selector = {"matchLabels": envoy_pod_selector(props.gateway_name, props.namespace)}

    def spread(key: str) -> dict:
        return {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector,
                "matchLabelKeys": ["pod-template-hash"], "nodeTaintsPolicy": "Honor"}
    return gw.EnvoyProxyKubernetesProvider(
        envoy_service=gw.EnvoyServiceSpec(type="LoadBalancer", annotations=nlb_annotations(props.internal)),
        envoy_deployment=gw.EnvoyDeploymentSpec(
            pod={"nodeSelector": {c.POOL_LABEL: c.SYSTEM_POOL},
                 "topologySpreadConstraints": [spread(c.ZONE_LABEL), spread(c.HOSTNAME_LABEL)]},
            container={"resources": {"requests": dict(c.ENVOY_PROXY_REQUESTS),
                                     "limits": {"memory": c.ENVOY_PROXY_MEMORY_LIMIT}}}),
        envoy_hpa=gw.EnvoyHpaSpec(
            min_replicas=c.ENVOY_PROXY_MIN_REPLICAS, max_replicas=c.ENVOY_PROXY_MAX_REPLICAS,
            metrics=[{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": c.ENVOY_PROXY_CPU_TARGET_PERCENT}}}]),
        envoy_pdb=gw.EnvoyPdbSpec(max_unavailable=1))


class ClusterWide(Construct):
    def __init__(self, scope: Construct, id: str, props: ClusterWideProps) -> None:
        super().__init__(scope, id)
        ns = props.namespace
        part_of = {c.PART_OF_LABEL: c.PART_OF}
        self.namespace = k8s.KubeNamespace(self, "namespace", metadata=k8s.ObjectMeta(name=ns, labels={
            **part_of,
            # The pods meet the restricted Pod Security Standard; the namespace enforces it.
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }))
        # The only ServiceAccount: every server pod runs as it and assumes the role to read the store.
        self.service_account = k8s.KubeServiceAccount(
            self, "service-account", automount_service_account_token=False,
            metadata=k8s.ObjectMeta(name=c.SERVICE_ACCOUNT, namespace=ns, labels=part_of,
                                    annotations={"eks.amazonaws.com/role-arn": props.role_arn}))

        def from_namespace(name: str) -> k8s.NetworkPolicyPeer:
            return k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(
                match_labels={"kubernetes.io/metadata.name": name}))

        # Ingress to the servers only from Envoy's proxies, this namespace and the monitoring namespace
        # (enforced once the VPC CNI's network policy support is on, which the stacks do). Egress stays
        # open: the pods read the store (S3) and resolve names.
        self.network_policy = k8s.KubeNetworkPolicy(
            self, "network-policy", metadata=k8s.ObjectMeta(name="modelfleet-servers", namespace=ns, labels=part_of),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels={c.NAME_LABEL: c.NAME}),
                policy_types=["Ingress"],
                ingress=[k8s.NetworkPolicyIngressRule(
                    from_=[from_namespace(c.ENVOY_GATEWAY_NAMESPACE), from_namespace(ns), from_namespace(props.monitoring_namespace)],
                    ports=[k8s.NetworkPolicyPort(port=k8s.IntOrString.from_number(c.PORT), protocol="TCP")])]))

        self.envoy_proxy = gw.EnvoyProxy(
            self, "envoy-proxy", metadata={"name": props.envoy_proxy_name, "namespace": c.ENVOY_GATEWAY_NAMESPACE, "labels": part_of},
            spec=gw.EnvoyProxySpec(provider=gw.EnvoyProxyProvider(kubernetes=envoy_provider(props))))
        self.gateway_class = gw.GatewayClass(
            self, "gateway-class", metadata={"name": props.gateway_class_name, "labels": part_of},
            spec=gw.GatewayClassSpec(
                controller_name=c.ENVOY_GATEWAY_CONTROLLER,
                description="modelfleet: Envoy Gateway behind an NLB",
                parameters_ref=gw.ParametersReference(group="gateway.envoyproxy.io", kind="EnvoyProxy",
                                                      name=props.envoy_proxy_name, namespace=c.ENVOY_GATEWAY_NAMESPACE)))
        self.gateway = gw.Gateway(
            self, "gateway", metadata={"name": props.gateway_name, "namespace": ns, "labels": part_of},
            spec=gw.GatewaySpec(gateway_class_name=props.gateway_class_name, listeners=[gw.Listener(
                name="http", protocol="HTTP", port=props.gateway_port, hostname=props.gateway_host,
                allowed_routes=gw.AllowedRoutes(namespaces=gw.RouteNamespaces(from_="Same")))]))
