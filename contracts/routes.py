"""routes.json from a plan (ARCHITECTURE.md, "routes.json"), built in one place for every runtime: the
charts (servers at their cluster DNS names, models through the gateway) and `deploy local` (servers on
127.0.0.1, no gateway). A runtime says only where the gateway is (`base_url`, "" for none) and where each
server answers (`url_of`).

Kept to Python 3.10 syntax: this package also runs inside the Neuron images.
"""
from __future__ import annotations

from typing import Callable, Tuple

from contracts.models import Plan, Routes, Server

PREDICTIONS_PREFIX = "/predictions/"
V2_MODELS_PREFIX = "/v2/models/"
# The paths the gateway routes per model (an HTTPRoute match each); routes.json names the first.
ROUTE_PREFIXES: Tuple[str, ...] = (PREDICTIONS_PREFIX, V2_MODELS_PREFIX)


def model_path(model_id: str) -> str:
    """A model's path, relative to the gateway or to its server."""
    return f"{PREDICTIONS_PREFIX}{model_id}"


def routes_for(plan: Plan, base_url: str, url_of: Callable[[Server], str]) -> Routes:
    """Every model of the plan with its server and path, every server with its direct URL and models, in
    plan order. `base_url` "" means no gateway: the load test then sends each request to its server's URL."""
    return Routes.model_validate({
        "base_url": base_url,
        "models": {m: {"server": s.id, "path": model_path(m)} for s in plan.servers for m in s.models},
        "servers": {s.id: {"url": url_of(s), "models": list(s.models)} for s in plan.servers},
    })
