"""Routing: a server's HTTPRoutes (split to stay within the API's 128 matches), and routes.json."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple

from constructs import Construct

from charts import constants as c
from charts import gateway_api as gw
from charts import naming
from contracts import Plan, Routes


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
    """routes.json (ARCHITECTURE.md): each model's path through the gateway and each server's in-cluster URL."""
    doc = {
        "base_url": base_url,
        "models": {m: {"server": s.id, "path": f"{c.ROUTE_PREFIXES[0]}{m}"} for s in plan.servers for m in s.models},
        "servers": {s.id: {"url": naming.service_url(s.id, namespace), "models": list(s.models)} for s in plan.servers},
    }
    Routes.model_validate(doc)  # the contract the load test reads
    return doc
