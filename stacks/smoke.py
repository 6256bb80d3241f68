"""Smoke test after a deployment: a Job inside the stage's cluster, its result read back.

How the result is observed: the Job (`python -m loadtest smoke`: one request to the first model of
every server, through the Gateway's NLB address with the listener's Host header; the routes it needs
are a subset of the charts' routes.json, passed in an environment variable) runs in the environment's namespace with `backoffLimit: 0`. A
`KubernetesObjectValue` (the kubectl provider, which runs inside the VPC and so needs no public
endpoint) polls `.status.conditions[?(@.status=="True")].type` until the Job has a terminal
condition, and the stack outputs it (`Complete`/`SuccessCriteriaMet` or `Failed`/`FailureTarget`).
The pipeline's post-stage step reads that output and fails unless it says `Complete`; a Job that
never finishes times the custom resource out, which fails the stage deployment itself.
Each deployment gets a new Job name (a digest of image, tag and models), so every release is tested.
When it fails, `operator_commands` is what the pipeline prints: the commands that show why (the Job's
log, its events, the servers' Deployments and pods), with the cluster, namespace and Job filled in.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping

from aws_cdk import CfnOutput, Duration
from aws_cdk import aws_eks_v2 as eks
from constructs import Construct

JOB_CONDITIONS_PATH = '.status.conditions[?(@.status=="True")].type'


# No shell needed in the image: write the routes from the environment, then run the load test's CLI.
_RUN = ("import os, runpy, sys; open('/tmp/routes.json', 'w').write(os.environ['SMOKE_ROUTES']); "
        "sys.argv = ['loadtest', 'smoke', '--routes', '/tmp/routes.json', '--base-url', os.environ['SMOKE_BASE_URL'], "
        "'--header', 'Host:' + os.environ['SMOKE_HOST'], '--deadline-s', os.environ['SMOKE_DEADLINE_S'], "
        "'--out', '/tmp/report', '--quiet']; "
        "runpy.run_module('loadtest', run_name='__main__', alter_sys=True)")


def smoke_routes(routes: Mapping[str, Any]) -> Dict[str, Any]:
    """The first model of every server, from the charts' routes.json."""
    servers = routes["servers"]
    models = {s["models"][0]: routes["models"][s["models"][0]] for s in servers.values()}
    return {"base_url": routes["base_url"], "models": models,
            "servers": {sid: {"url": s["url"], "models": [s["models"][0]]} for sid, s in servers.items()}}


def retry_deadline_s(job_deadline_s: int) -> int:
    """How long the smoke step retries servers that are still pulling images or loading models:
    the Job's deadline less a minute to report, so a slow fleet fails with its servers named
    rather than a killed Job."""
    return max(30, job_deadline_s - 60)


def smoke_job(*, name: str, namespace: str, image: str, base_url: str, host: str, routes: Mapping[str, Any],
              deadline_s: int) -> Dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "modelfleet", "app.kubernetes.io/name": "smoke"}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_s,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "smoke"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "smoke",
                        "image": image,
                        "command": ["python", "-c", _RUN],
                        "env": [{"name": "SMOKE_ROUTES", "value": json.dumps(routes, sort_keys=True)},
                                {"name": "SMOKE_BASE_URL", "value": base_url},
                                {"name": "SMOKE_HOST", "value": host},
                                {"name": "SMOKE_DEADLINE_S", "value": str(retry_deadline_s(deadline_s))}],
                        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                                      "limits": {"memory": "512Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def job_name(*parts: str) -> str:
    return "smoke-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def operator_commands(*, cluster_name: str, region: str, namespace: str, job: str) -> List[str]:
    """What an operator runs (with the admin or read-only role of config/<env>.yaml, from a machine that
    reaches the API endpoint: README "Reaching the cluster") to see why the smoke test failed."""
    return [
        f"aws eks update-kubeconfig --region {region} --name {cluster_name}",
        f"kubectl -n {namespace} logs job/{job}",
        f"kubectl -n {namespace} describe job/{job}",
        f"kubectl -n {namespace} get deployments,pods -o wide",
        f"kubectl -n {namespace} get events --sort-by=.lastTimestamp",
    ]


class SmokeTest(Construct):
    """Props in: cluster, namespace, image, gateway address and host, model ids to call.
    Out: `result` (the Job's terminal conditions) and its output."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.ICluster, namespace: str, image: str,
                 gateway_address: str, gateway_host: str, gateway_port: int, routes: Mapping[str, Any],
                 release: str, timeout_minutes: int, cluster_name: str, region: str) -> None:
        super().__init__(scope, id)
        subset = smoke_routes(routes)
        name = job_name(image, gateway_host, release, json.dumps(subset, sort_keys=True))
        self.job_name = name
        self.commands = operator_commands(cluster_name=cluster_name, region=region, namespace=namespace, job=name)
        base_url = f"http://{gateway_address}:{gateway_port}"
        self.job = eks.KubernetesManifest(self, "Job", cluster=cluster, manifest=[smoke_job(
            name=name, namespace=namespace, image=image, base_url=base_url, host=gateway_host,
            routes=subset, deadline_s=timeout_minutes * 60)])
        self.result = eks.KubernetesObjectValue(
            self, "Result", cluster=cluster, object_type="job", object_name=name, object_namespace=namespace,
            json_path=JOB_CONDITIONS_PATH, timeout=Duration.minutes(timeout_minutes + 2))
        self.result.node.add_dependency(self.job)
        self.output = CfnOutput(self, "Conditions", value=self.result.value,
                                description="the smoke Job's terminal conditions: must include Complete")
