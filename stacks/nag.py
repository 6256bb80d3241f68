"""cdk-nag (AwsSolutionsChecks, through CDK's Validations API) and the acknowledgements.

Every acknowledgement is in stacks/acknowledgements.yaml: one rule finding (`AwsSolutions-IAM4[...]`
style ids name the finding exactly), one construct path pattern (fnmatch, matched against every
construct's path in the app, stages included), and the reason. A test pins the file: every entry has
a reason, matches at least one construct, and nothing else is acknowledged.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import yaml
from aws_cdk import Acknowledgment, Validations
from constructs import Construct

ACKNOWLEDGEMENTS = Path(__file__).resolve().parent / "acknowledgements.yaml"
MIN_REASON = 40
PLACEHOLDER = re.compile(r"\{(env|account|region|bucket|pipeline_account)\}")


@dataclass(frozen=True)
class Ack:
    rule: str
    path: str
    reason: str


def load_acknowledgements(path: Path = ACKNOWLEDGEMENTS) -> List[Ack]:
    data = yaml.safe_load(path.read_text()) or {}
    acks = []
    for i, entry in enumerate(data.get("cdk_nag", [])):
        missing = [k for k in ("rule", "path", "reason") if not entry.get(k)]
        if missing:
            raise ValueError(f"{path}: cdk_nag[{i}] lacks {', '.join(missing)}")
        acks.append(Ack(str(entry["rule"]), str(entry["path"]), " ".join(str(entry["reason"]).split())))
    return acks


def expand(ack: Ack, variables: Sequence[Mapping[str, str]]) -> List[str]:
    """The rule ids of `ack` with its placeholders ({account}, {env}, {bucket}, {region},
    {pipeline_account}) filled in from each environment's variables."""
    if not PLACEHOLDER.search(ack.rule):
        return [ack.rule]
    return sorted({_fill(ack.rule, v) for v in variables})


def _fill(rule: str, variables: Mapping[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), rule)


def apply_acknowledgements(app: Construct, variables: Sequence[Mapping[str, str]],
                           acks: List[Ack] | None = None) -> Dict[int, List[str]]:
    """Acknowledge each entry on every construct whose path matches; returns {index: matched paths}."""
    acks = load_acknowledgements() if acks is None else acks
    # One jsii round trip per construct for its path, then matching in Python.
    paths = [(c, c.node.path) for c in app.node.find_all()]
    matched: Dict[int, List[str]] = {}
    for i, ack in enumerate(acks):
        hits = [c for c, path in paths if path and fnmatch.fnmatchcase(path, ack.path)]
        matched[i] = [path for _, path in paths if path and fnmatch.fnmatchcase(path, ack.path)]
        ids = expand(ack, variables)
        for c in hits:
            Validations.of(c).acknowledge(*(Acknowledgment(id=rule, reason=ack.reason) for rule in ids))
    return matched


def nag_pack(app: Construct):
    from cdk_nag import AwsSolutionsChecks

    return AwsSolutionsChecks(app, verbose=True)


@dataclass(frozen=True)
class Finding:
    rule: str
    path: str
    severity: str
    description: str


def report_findings(report: dict) -> List[Finding]:
    """Findings of a CDK policy validation report (cdk.out/validation-report.json, or the exception's)."""
    out = []
    for plugin in report.get("pluginReports", []):
        for v in plugin.get("violations", []):
            for c in v.get("violatingConstructs", []):
                out.append(Finding(v["ruleName"], c["constructPath"], v.get("severity", ""), v.get("description", "")))
    return out
