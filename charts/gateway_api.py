"""Gateway API v1 (../shared/crds/gateway-api-v1.6.1) and Envoy Gateway's EnvoyProxy as cdk8s objects.

`cdk8s import` needs the network, so these are written by hand from the CRDs' openAPIV3Schema: typed
props (the fields this project sets, named as in the schema, snake_case here) and one `ApiObject`
subclass per kind. The tests validate every object against the CRD schema it came from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import cdk8s
from constructs import Construct

GATEWAY_API = "gateway.networking.k8s.io/v1"
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"


def _camel(name: str) -> str:
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def to_json(value: Any) -> Any:
    """Props -> the API's JSON: camelCase keys (or a field's `json` metadata where the API spells it otherwise),
    None left out. Dicts are passed through as they are: they hold core Kubernetes types in the API's JSON."""
    if dataclasses.is_dataclass(value):
        return {f.metadata.get("json", _camel(f.name)): to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


# --- shared ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParentReference:
    name: str
    namespace: Optional[str] = None
    section_name: Optional[str] = None
    group: Optional[str] = None
    kind: Optional[str] = None


# --- GatewayClass -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParametersReference:
    group: str
    kind: str
    name: str
    namespace: Optional[str] = None


@dataclass(frozen=True)
class GatewayClassSpec:
    controller_name: str
    parameters_ref: Optional[ParametersReference] = None
    description: Optional[str] = None


# --- Gateway -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RouteNamespaces:
    from_: str = "Same"  # Same | All | Selector


@dataclass(frozen=True)
class AllowedRoutes:
    namespaces: RouteNamespaces = field(default_factory=RouteNamespaces)


@dataclass(frozen=True)
class Listener:
    name: str
    protocol: str
    port: int
    hostname: Optional[str] = None
    allowed_routes: Optional[AllowedRoutes] = None


@dataclass(frozen=True)
class GatewaySpec:
    gateway_class_name: str
    listeners: List[Listener]


# --- HTTPRoute -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HTTPPathMatch:
    value: str
    type: str = "PathPrefix"  # Exact | PathPrefix | RegularExpression


@dataclass(frozen=True)
class HTTPRouteMatch:
    path: HTTPPathMatch


@dataclass(frozen=True)
class HTTPBackendRef:
    name: str
    port: int
    kind: Optional[str] = None  # Service by default
    weight: Optional[int] = None


@dataclass(frozen=True)
class HTTPRouteTimeouts:
    request: Optional[str] = None
    backend_request: Optional[str] = None


@dataclass(frozen=True)
class HTTPRouteRule:
    matches: List[HTTPRouteMatch]
    backend_refs: List[HTTPBackendRef]
    name: Optional[str] = None
    timeouts: Optional[HTTPRouteTimeouts] = None


@dataclass(frozen=True)
class HTTPRouteSpec:
    parent_refs: List[ParentReference]
    rules: List[HTTPRouteRule]
    hostnames: Optional[List[str]] = None


# --- EnvoyProxy (Envoy Gateway v1.7's own API; its CRD is not among ../shared/crds) ------------------------
# Fields as in Envoy Gateway v1.7.4's api/v1alpha1 (KubernetesDeploymentSpec, KubernetesHorizontalPodAutoscalerSpec,
# KubernetesPodDisruptionBudgetSpec); the pod and container parts are core Kubernetes types, given as their JSON.

@dataclass(frozen=True)
class EnvoyServiceSpec:
    type: str = "LoadBalancer"
    annotations: Optional[Dict[str, str]] = None
    external_traffic_policy: Optional[str] = None


@dataclass(frozen=True)
class EnvoyDeploymentSpec:
    """No replicas while an HPA is set: Envoy Gateway would reset the count to it on every reconcile."""

    pod: Optional[Dict[str, Any]] = None  # KubernetesPodSpec: topologySpreadConstraints, affinity, tolerations, ...
    container: Optional[Dict[str, Any]] = None  # KubernetesContainerSpec: resources, ...
    replicas: Optional[int] = None


@dataclass(frozen=True)
class EnvoyHpaSpec:
    max_replicas: int
    min_replicas: Optional[int] = None
    metrics: Optional[List[Dict[str, Any]]] = None  # autoscaling/v2 MetricSpec; Envoy Gateway's default is 80% CPU


@dataclass(frozen=True)
class EnvoyPdbSpec:
    min_available: Optional[int] = None
    max_unavailable: Optional[int] = None


@dataclass(frozen=True)
class EnvoyProxyKubernetesProvider:
    envoy_service: EnvoyServiceSpec
    envoy_deployment: Optional[EnvoyDeploymentSpec] = None
    envoy_hpa: Optional[EnvoyHpaSpec] = None
    envoy_pdb: Optional[EnvoyPdbSpec] = field(default=None, metadata={"json": "envoyPDB"})


@dataclass(frozen=True)
class EnvoyProxyProvider:
    kubernetes: EnvoyProxyKubernetesProvider
    type: str = "Kubernetes"


@dataclass(frozen=True)
class EnvoyProxySpec:
    provider: EnvoyProxyProvider


# --- ApiObjects ------------------------------------------------------------------------------------------

class _SpecObject(cdk8s.ApiObject):
    API_VERSION = ""
    KIND = ""

    def __init__(self, scope: Construct, id: str, *, metadata: cdk8s.ApiObjectMetadata | Dict[str, Any], spec: Any) -> None:
        super().__init__(scope, id, api_version=self.API_VERSION, kind=self.KIND, metadata=metadata)
        # One patch, plain JSON: the spec holds no cdk8s tokens or quantities.
        self.add_json_patch(cdk8s.JsonPatch.add("/spec", to_json(spec)))


class GatewayClass(_SpecObject):
    API_VERSION, KIND = GATEWAY_API, "GatewayClass"


class Gateway(_SpecObject):
    API_VERSION, KIND = GATEWAY_API, "Gateway"


class HttpRoute(_SpecObject):
    API_VERSION, KIND = GATEWAY_API, "HTTPRoute"


class EnvoyProxy(_SpecObject):
    API_VERSION, KIND = ENVOY_GATEWAY_API, "EnvoyProxy"
