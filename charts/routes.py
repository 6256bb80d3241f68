"""Routing: a server's HTTPRoutes (split to stay within the API's 128 matches), and routes.json."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple

from constructs import Construct

from charts import constants as c
from charts import gateway_api as gw
from charts import naming
from contracts import Plan
from contracts.routes import routes_for


@dataclass(frozen=True)
class ServerRoutesProps:
    server_id: str
    models: Tuple[str, ...]
    namespace: str
    labels: Mapping[str, str]
    gateway_name: str
    gateway_host: str


def route_spec(server_id: str, models: Sequence[str], gateway_name: str, gateway_host: str) -> gw.HTTPRouteSpec:
    backend = [gw.HTTPBackendRef(name=server_id, port=c.PORT)]
    rules = [gw.HTTPRouteRule(matches=[gw.HTTPRouteMatch(path=gw.HTTPPathMatch(value=p)) for p in paths], backend_refs=backend)
             for paths in naming.route_rules(models)]
    return gw.HTTPRouteSpec(parent_refs=[gw.ParentReference(name=gateway_name)], hostnames=[gateway_host], rules=rules)


class ServerRoutes(Construct):
    """`/predictions/<model-id>` and `/v2/models/<model-id>` to the server's Service, in as many HTTPRoutes
    as it takes to keep each within 128 matches."""

    def __init__(self, scope: Construct, id: str, props: ServerRoutesProps) -> None:
        super().__init__(scope, id)
        self.routes = [
            gw.HttpRoute(self, str(i),
                         metadata={"name": naming.route_name(props.server_id, i), "namespace": props.namespace,
                                   "labels": dict(props.labels)},
                         spec=route_spec(props.server_id, chunk, props.gateway_name, props.gateway_host))
            for i, chunk in enumerate(naming.route_chunks(props.models))
        ]


def routes_document(plan: Plan, namespace: str, base_url: str) -> Dict[str, Any]:
    """routes.json for the cluster: each model's path through the gateway, each server's in-cluster URL."""
    return routes_for(plan, base_url, lambda s: naming.service_url(s.id, namespace)).model_dump(mode="json")
