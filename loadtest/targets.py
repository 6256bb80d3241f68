"""What the load test drives: models and their URLs from routes.json, request rates from models.yaml,
prices and predictions from plan.json.

URL of a model (ARCHITECTURE.md, routes.json): `base_url + path` through the gateway. Where `base_url`
is empty (`python -m deploy --runtime local` writes it so: there is no gateway on one machine), the
model's server's direct `url + path`. `--base-url` overrides routes.json's `base_url`; `--base-url ''`
forces direct server URLs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlsplit

from contracts import ContractError, ModelCatalogue, Plan, Routes, load


@dataclass(frozen=True)
class Target:
    model: str
    server: str
    url: str  # absolute: scheme://host[:port]/path


def resolve(routes: Routes, base_url: Optional[str] = None) -> List[Target]:
    """Every model's target, in routes.json's order. `base_url` None: routes.json's own."""
    base = routes.base_url if base_url is None else base_url
    base = base.rstrip("/")
    out = []
    for model, route in routes.models.items():
        if route.server not in routes.servers:
            raise ContractError(f"routes.json: models.{model}.server: {route.server!r} is not in servers")
        path = route.path if route.path.startswith("/") else "/" + route.path
        root = base if base else routes.servers[route.server].url.rstrip("/")
        if not root:
            raise ContractError(f"routes.json: no base_url and servers.{route.server}.url is empty: nowhere to send {model}")
        url = root + path
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ContractError(f"routes.json: {model} resolves to {url!r}, not an http(s) URL")
        out.append(Target(model, route.server, url))
    return out


def load_routes(path: Path) -> Routes:
    return load(Routes, path)


def load_plan(path: Optional[Path]) -> Optional[Plan]:
    return load(Plan, path) if path is not None else None


def load_rates(path: Optional[Path]) -> Dict[str, float]:
    """{model: rps} from a models.yaml (or .json) catalogue; {} without one."""
    if path is None:
        return {}
    catalogue = load(ModelCatalogue, path)
    return {m.id: m.rps for m in catalogue.models}


def first_per_server(targets: List[Target]) -> Dict[str, Target]:
    """One target per server (its first model): what `smoke` asks."""
    out: Dict[str, Target] = {}
    for t in targets:
        out.setdefault(t.server, t)
    return out
