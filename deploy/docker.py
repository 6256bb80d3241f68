"""The docker runtime: one container per plan server from the server images (`python -m serving build`),
published on 127.0.0.1 and a free port, with the pod contract's environment.

The image of a server is --image with {processor} replaced (default modelfleet-serving:{processor}, the tag
`python -m serving build` gives). A file:// store is mounted read-only at /store; an s3:// store is passed
as is, with the AWS_* variables of this shell passed by name (never written on the command line). The root
filesystem is read-only and /tmp and the model cache are tmpfs, as in a pod. gpu servers get `--gpus all`,
inf1/inf2 servers /dev/neuron0. Needs a reachable Docker engine: `docker info` is asked first, and its absence
is one clear error (no engine runs on the machine this was written on: only the client is installed).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional
from urllib.parse import urlsplit
from urllib.request import url2pathname

from charts import constants as c
from contracts import Plan, Server, write_json_atomic
from contracts.pod import pod_env
from deploy.local import HOST, free_port, normalise_store, routes_document
from deploy.readiness import DeployError, Probe, RuntimeMissing, wait_ready
from deploy.state import clear_state, read_state, write_state

DEFAULT_IMAGE = "modelfleet-serving:{processor}"
CONTAINER_STORE = "/store"
CHECK_TIMEOUT_S = 10.0
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def engine_problem(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Optional[str]:
    """None when `docker info` answers, else why not, in one line."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    try:
        result = run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"docker info did not answer within {CHECK_TIMEOUT_S:g} s"
    except OSError as exc:
        return f"docker info failed: {exc}"
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        return "no Docker engine is reachable: " + (detail[-1].rstrip(".") if detail else f"docker info exited {result.returncode}")
    return None


def container_name(server_id: str) -> str:
    return f"modelfleet-{server_id}"


def store_mount(store_uri: str) -> tuple[str, Optional[str]]:
    """(STORE_URI inside the container, host folder to mount at /store or None)."""
    uri = normalise_store(store_uri)
    if not uri.startswith("file://"):
        return uri, None
    return f"file://{CONTAINER_STORE}", url2pathname(urlsplit(uri).path)


def run_command(server: Server, image: str, store_uri: str, port: int, environ: Mapping[str, str]) -> List[str]:
    """`docker run` for one server (pure: the tests check it)."""
    inside_uri, folder = store_mount(store_uri)
    cmd = ["docker", "run", "--detach", "--name", container_name(server.id),
           "--label", f"{c.PART_OF_LABEL}={c.PART_OF}", "--label", f"{c.SERVER_LABEL}={server.id}",
           "--publish", f"{HOST}:{port}:{c.PORT}", "--read-only", "--tmpfs", "/tmp", "--tmpfs", c.MODEL_CACHE_DIR]
    for key, value in pod_env(server, inside_uri).items():
        cmd += ["--env", f"{key}={value}"]
    for key in AWS_VARS:
        if key in environ:
            cmd += ["--env", key]  # by name: docker takes the value from this environment
    if folder is not None:
        cmd += ["--volume", f"{folder}:{CONTAINER_STORE}:ro"]
    if server.processor == "gpu":
        cmd += ["--gpus", "all"]
    elif server.processor in ("inf1", "inf2"):
        cmd += ["--device", "/dev/neuron0"]
    return cmd + [image.format(processor=server.processor)]


def start(plan: Plan, plan_path: Path, state_dir: Path, store_uri: str, image: str, timeout_s: float,
          on_update: Callable[[str, Probe], None] = lambda s, p: None) -> Dict[str, Any]:
    problem = engine_problem()
    if problem is not None:
        raise RuntimeMissing(f"--runtime docker needs a Docker engine: {problem}. Start Docker (or point DOCKER_HOST at one), "
                          f"or use --runtime local, which runs the same servers as processes")
    if read_state(state_dir) is not None:
        raise DeployError(f"{state_dir}: a deployment is already recorded: run python -m deploy stop --state-dir {state_dir} first")
    state: Dict[str, Any] = {"runtime": "docker", "plan": str(plan_path), "store": store_uri, "image": image,
                             "routes": str(state_dir / "routes.json"), "servers": {}}
    urls: Dict[str, str] = {}
    try:
        for server in plan.servers:
            port = free_port()
            cmd = run_command(server, image, store_uri, port, os.environ)
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise DeployError(f"docker run for server {server.id} failed: {result.stderr.strip() or result.stdout.strip()}")
            urls[server.id] = f"http://{HOST}:{port}"
            state["servers"][server.id] = {"container": container_name(server.id), "port": port, "url": urls[server.id],
                                           "models": list(server.models)}
            write_state(state_dir, state)
        wait_ready(urls, container_gone, timeout_s, on_update, log_of=lambda sid: f"(docker logs {container_name(sid)})")
    except BaseException:
        stop(state)
        clear_state(state_dir)
        raise
    write_json_atomic(state_dir / "routes.json", routes_document(urls, plan))
    return state


def container_gone(server_id: str) -> Optional[str]:
    result = subprocess.run(["docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container_name(server_id)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return "its container is gone"
    status, _, code = result.stdout.strip().partition(" ")
    return None if status in ("running", "created", "restarting") else f"container {status}, exit code {code}"


def stop(state: Dict[str, Any], report: Callable[[str], None] = lambda m: None) -> Dict[str, str]:
    """`docker stop` (SIGTERM, then SIGKILL after the grace period) and `docker rm` each container."""
    outcome = {}
    for sid, rec in state["servers"].items():
        name = rec["container"]
        stopped = subprocess.run(["docker", "stop", "--time", str(c.GRACE_SECONDS + 5), name], capture_output=True, text=True)
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, text=True)
        outcome[sid] = "stopped" if stopped.returncode == 0 else f"not stopped: {stopped.stderr.strip()}"
        report(f"{sid}: {outcome[sid]}")
    return outcome
