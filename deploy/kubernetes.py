"""The kubernetes runtime: `kubectl apply` of the rendered manifests (`python -m charts synth` -> dist/manifests/)
to kubectl's current context, then optionally `kubectl wait` for the servers' Deployments.

This applies the per-server objects to a cluster that already has the platform (namespace, Envoy Gateway, node
groups, IRSA role): the stacks create that, and `npx cdk deploy` deploys platform and servers together (the
servers as Helm chart assets). No cluster is reachable where this was written (no API server, no kubeconfig):
a missing kubectl or context is one clear error before anything is applied.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable, List, Optional

from charts import constants as c
from deploy.readiness import DeployError, RuntimeMissing

CDK_HINT = "or deploy the platform and the servers together with the stacks: npx cdk deploy (see the README)"
CHECK_TIMEOUT_S = 15.0


def apply_command(manifests: Path, context: str) -> List[str]:
    return ["kubectl", "--context", context, "apply", "--recursive", "--filename", str(manifests)]


def wait_command(context: str, namespace: str, timeout_s: float) -> List[str]:
    return ["kubectl", "--context", context, "--namespace", namespace, "wait", "deployment", "--selector",
            f"{c.PART_OF_LABEL}={c.PART_OF}", "--for", "condition=Available", f"--timeout={int(timeout_s)}s"]


def current_context(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str:
    """kubectl's current context, or DeployError saying what is missing."""
    if shutil.which("kubectl") is None:
        raise RuntimeMissing(f"--runtime kubernetes needs kubectl, which is not installed: install it and point it at the cluster "
                          f"(aws eks update-kubeconfig --name <cluster>), {CDK_HINT}")
    try:
        result = run(["kubectl", "config", "current-context"], capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeMissing(f"kubectl config current-context did not answer within {CHECK_TIMEOUT_S:g} s") from None
    context = result.stdout.strip()
    if result.returncode != 0 or not context:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimeMissing("--runtime kubernetes applies to kubectl's current context, and there is none"
                          f"{' (' + detail[-1] + ')' if detail else ''}: point kubectl at the cluster "
                          f"(aws eks update-kubeconfig --name <cluster>), {CDK_HINT}")
    return context


def deploy(dist: Path, namespace: str, wait_s: Optional[float], report: Callable[[str], None] = print) -> str:
    manifests = dist / "manifests"
    if not manifests.is_dir() or not any(manifests.glob("*.yaml")):
        raise RuntimeMissing(f"{manifests}: no manifests: render them first with python -m charts synth --plan plan.json "
                          f"--config config/<env>.yaml --out {dist}")
    context = current_context()
    report(f"applying {manifests} to context {context}")
    result = subprocess.run(apply_command(manifests, context))
    if result.returncode != 0:
        raise DeployError(f"kubectl apply exited {result.returncode} (context {context}); see its output above")
    if wait_s:
        report(f"waiting up to {wait_s:g} s for the servers' Deployments in {namespace} to be Available")
        result = subprocess.run(wait_command(context, namespace, wait_s))
        if result.returncode != 0:
            raise DeployError(f"the servers were not Available within {wait_s:g} s: kubectl -n {namespace} get pods shows why")
    routes = dist / "routes.json"
    report(f"deployed to {context}; test it with: python -m loadtest smoke --routes {routes}")
    return context
