"""The gateway objects against the CRDs the pinned Envoy Gateway release really installs (Gateway
API v1.4.1 experimental and Envoy Gateway's EnvoyProxy; tests/crds/envoy-gateway-v1.7.4/), as
well as against the v1.6.1 standard channel tests/test_charts.py checks: a field either release
does not know would be refused or pruned by the cluster."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

import charts  # noqa: F401  (quiets jsii's banner)
from charts.synth import synth
from tests.crd_schemas import served_schemas

ROOT = Path(__file__).resolve().parent.parent
INSTALLED = ROOT / "tests" / "crds" / "envoy-gateway-v1.7.4"
GATEWAY_KINDS = {"GatewayClass", "Gateway", "HTTPRoute", "EnvoyProxy"}


@pytest.fixture(scope="module")
def installed_schemas():
    return served_schemas(INSTALLED)


@pytest.fixture(scope="module")
def gateway_docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("installed-crds")
    synth(ROOT / "plans" / "dev.json", ROOT / "config" / "dev.yaml", d / "dist",
          instances_path=ROOT / "config" / "instances.yaml")
    docs = []
    for p in sorted((d / "dist").rglob("*.yaml")):
        if any(part.startswith("monitoring-") for part in p.relative_to(d / "dist").parts):
            continue  # the monitoring charts' templates escape Prometheus's {{ for Helm: not YAML until rendered
        docs += [doc for doc in yaml.safe_load_all(p.read_text(encoding="utf-8")) if doc and doc.get("kind") in GATEWAY_KINDS]
    return docs


def test_the_vendored_crds_are_the_release_s(installed_schemas):
    kinds = {kind for _, kind in installed_schemas}
    assert kinds == GATEWAY_KINDS
    bundle = json.loads((INSTALLED / "httproutes.json").read_text(encoding="utf-8"))["metadata"]["annotations"]
    assert bundle["gateway.networking.k8s.io/bundle-version"] == "v1.4.1"


def test_gateway_objects_validate_against_what_envoy_gateway_installs(gateway_docs, installed_schemas):
    seen = set()
    for doc in gateway_docs:
        jsonschema.validate(doc, installed_schemas[(doc["apiVersion"], doc["kind"])])
        seen.add(doc["kind"])
    assert seen == GATEWAY_KINDS


def test_an_unknown_envoyproxy_field_fails_the_installed_schema(gateway_docs, installed_schemas):
    """The check has teeth: the EnvoyProxy schema forbids a field the release does not have."""
    proxy = copy.deepcopy(next(d for d in gateway_docs if d["kind"] == "EnvoyProxy"))
    proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(proxy, installed_schemas[(proxy["apiVersion"], "EnvoyProxy")])
