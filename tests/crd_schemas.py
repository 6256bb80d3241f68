"""CRD schemas for validating custom objects the way an API server would check their shape: each served
version's openAPIV3Schema, keyed by (apiVersion, kind). A module, not a test file, so test files import it
rather than each other."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import yaml

SchemaKey = Tuple[str, str]  # (apiVersion "group/version", kind)


def load_crds(folder: Path) -> list:
    """Every CustomResourceDefinition document in the folder's *.json and *.yaml files (non-CRD documents skipped)."""
    crds = []
    for p in sorted(folder.iterdir()):
        if p.suffix == ".json":
            docs = [json.loads(p.read_text(encoding="utf-8"))]
        elif p.suffix in (".yaml", ".yml"):
            docs = list(yaml.safe_load_all(p.read_text(encoding="utf-8")))
        else:
            continue
        crds += [d for d in docs if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]
    if not crds:
        raise FileNotFoundError(f"no CustomResourceDefinition in {folder}: vendor the CRDs there (see its README.md)")
    return crds


def served_schemas(folder: Path) -> Dict[SchemaKey, Dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema for every served version of the folder's CRDs."""
    out: Dict[SchemaKey, Dict[str, Any]] = {}
    for crd in load_crds(folder):
        for v in crd["spec"]["versions"]:
            if v.get("served", True):
                out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


def validate(obj: Dict[str, Any], schema: Dict[str, Any]) -> None:
    """jsonschema.ValidationError if `obj` breaks `schema`. Unlike jsonschema.validate, the schema itself is not
    checked against the metaschema first: CRD patterns are Go (RE2) regular expressions, some of which Python's
    `re` refuses (prometheus-operator's `^(?i)(abort|warn)?$`); a pattern is compiled only where a value meets it."""
    import jsonschema

    jsonschema.validators.validator_for(schema)(schema).validate(obj)
