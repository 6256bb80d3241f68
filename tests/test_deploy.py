"""The deploy runtimes. local: two real `python -m serving` processes from a store of two random bert-tiny models
(one per server), started, served (and load-tested in every mode), stopped; a server that cannot start stops
everything; Ctrl-C during start stops everything; SIGKILL after the grace period. docker and kubernetes: their
commands, and one clear error where no engine / no kubectl context exists (as on this machine)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml

from contracts import Plan, Server
from deploy import cli, docker, kubernetes, local
from deploy.readiness import classify
from deploy.state import read_state
from loadtest import cli as loadtest_cli
from tests.serving_fixtures import wait_for

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["tiny-a", "tiny-b"]


def make_plan(servers: Dict[str, List[str]], p90: float = 20.0, budget: int = 512) -> Dict[str, Any]:
    doc = {"schema": 1, "inputs": {}, "options": {}, "solver": {}, "instances": {"c5.xlarge": 1}, "cost_per_hour": 0.17,
           "platform_per_hour": 0.0, "lower_bound_per_hour": 0.17, "gap": 0.0, "solve_seconds": 0.0, "created_at": "2026-01-01T00:00:00Z",
           "servers": [{"id": sid, "instance_type": "c5.xlarge", "processor": "cpu", "replicas": 1,
                        "placements": [{"instance_index": 0, "device_index": i}], "models": models,
                        "requests": {"cpu_m": 2000, "memory_mib": 1024}, "memory_budget_mib": budget + i,
                        "predicted": {"utilisation": 0.05, "p90_ms": p90}} for i, (sid, models) in enumerate(servers.items())],
           "profile_sources": {}}
    Plan.model_validate(doc)
    return doc


def write_plan(path: Path, doc: Dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def gone(pid: int) -> bool:
    return local.process_gone(pid) is not None


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A file store with two random bert-tiny models, a classifier and a question answerer (which needs the
    load test to send a context), traced for cpu."""
    from tracing import cli as tracing_cli

    base = tmp_path_factory.mktemp("deploy-store")
    models = base / "models.yaml"
    specs = [{"id": m, "source": "random:bert-tiny@3", "task": task, "sequence_length": 32,
              "batch_size": 1, "rps": rps}
             for m, rps, task in zip(MODELS, (6.0, 4.0), ("sequence-classification", "question-answering"))]
    models.write_text(yaml.safe_dump({"models": specs}))
    root = base / "store"
    assert tracing_cli.main(["trace", "--models", str(models), "--processor", "cpu", "--store", root.as_uri(),
                             "--reps", "3", "--warmup", "1", "--batches", "1", "--quiet"]) == 0
    return {"uri": root.as_uri(), "models": models, "base": base}


@pytest.fixture(scope="module")
def fleet(store: Dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """`python -m deploy --plan plan.json` (the local runtime) with one model per server; stopped at the end."""
    base = tmp_path_factory.mktemp("fleet")
    plan = write_plan(base / "plan.json", make_plan({"cpu-0000": ["tiny-a"], "cpu-0001": ["tiny-b"]}))
    state_dir = base / "state"
    rc = cli.main(["--plan", str(plan), "--store", store["uri"], "--state-dir", str(state_dir), "--timeout", "120", "--quiet",
                   "--env", "MAX_DELAY_MS=1"])
    state = read_state(state_dir)
    try:
        assert rc == 0, "deploy failed: " + "".join(Path(r["log"]).read_text() for r in (state or {"servers": {}})["servers"].values())
        yield {"plan": plan, "state_dir": state_dir, "state": state, "routes": state_dir / "routes.json", "base": base}
    finally:
        cli.main(["stop", "--state-dir", str(state_dir)])
        for rec in (state or {"servers": {}})["servers"].values():  # whatever stop left
            if not gone(rec["pid"]):
                os.kill(rec["pid"], signal.SIGKILL)


@pytest.mark.slow  # the module's store (a trace) and real server processes
def test_local_runtime_starts_two_servers_and_writes_routes(fleet: Dict[str, Any]) -> None:
    from tests.serving_fixtures import http

    routes = json.loads(fleet["routes"].read_text())
    assert routes["base_url"] == ""  # no gateway on one machine: the load test goes to each server's url
    assert routes["models"] == {"tiny-a": {"server": "cpu-0000", "path": "/predictions/tiny-a"},
                                "tiny-b": {"server": "cpu-0001", "path": "/predictions/tiny-b"}}
    urls = {sid: s["url"] for sid, s in routes["servers"].items()}
    assert all(u.startswith("http://127.0.0.1:") for u in urls.values()) and len(set(urls.values())) == 2
    for sid, model, other in (("cpu-0000", "tiny-a", "tiny-b"), ("cpu-0001", "tiny-b", "tiny-a")):
        assert http("GET", urls[sid] + "/healthz").json()["server_id"] == sid
        reply = http("POST", urls[sid] + f"/predictions/{model}", {"inputs": "who said hello?", "context": "Ada said hello."})
        assert reply.status == 200 and reply.json()["model"] == model
        assert reply.json()["labels" if model == "tiny-a" else "answers"]
        assert http("POST", urls[sid] + f"/predictions/{other}", {"inputs": "hello"}).status == 404  # each server has its own
    state = fleet["state"]
    for i, sid in enumerate(("cpu-0000", "cpu-0001")):
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{state['servers'][sid]['pid']}/environ").read_text().split("\0") if "=" in item)
        assert environ["SERVER_ID"] == sid and environ["MEMORY_BUDGET_MIB"] == str(512 + i)  # the plan's, per server
        assert environ["STORE_URI"].startswith("file://") and environ["HOST"] == "127.0.0.1" and environ["MAX_DELAY_MS"] == "1"
    status = subprocess.run([sys.executable, "-m", "deploy", "status", "--state-dir", str(fleet["state_dir"])], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and all(r["running"] for r in json.loads(status.stdout)["servers"])


@pytest.mark.slow  # the module's store (a trace) and real server processes
def test_a_second_start_is_refused_while_running(fleet: Dict[str, Any], store: Dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--plan", str(fleet["plan"]), "--store", store["uri"], "--state-dir", str(fleet["state_dir"]), "--quiet"])
    assert rc == 1 and "deploy stop" in capsys.readouterr().err
    assert read_state(fleet["state_dir"])["servers"].keys() == fleet["state"]["servers"].keys()  # the running one is untouched


@pytest.mark.slow  # the module's store (a trace) and real server processes
def test_every_load_test_mode_against_the_local_servers(fleet: Dict[str, Any], store: Dict[str, Any]) -> None:
    out = fleet["base"] / "report"
    rc = loadtest_cli.main(["smoke", "seq", "rnd", "bmk", "open", "--routes", str(fleet["routes"]), "--plan", str(fleet["plan"]),
                            "--models", str(store["models"]), "--out", str(out), "--quiet", "--count", "6", "--concurrency", "1,2",
                            "--step-duration", "1", "--duration", "1.5", "--scale", "1", "--time-limit", "60"])
    report = json.loads((out / "report.json").read_text())
    assert rc == 0, report
    modes = report["modes"]
    assert [r["ok"] for r in modes["smoke"]] == [True, True]
    assert modes["seq"]["ok"] == 2 and modes["rnd"]["ok"] == 6
    assert [p["concurrency"] for p in modes["bmk"]] == [1, 2] and all(p["ok"] >= 1 for p in modes["bmk"])
    rows = {r["server"]: r for r in modes["open"]["servers"]}
    assert rows.keys() == {"cpu-0000", "cpu-0001"} and rows["cpu-0000"]["planned_rps"] == 6.0
    assert all(r["predicted_p90_ms"] == 20.0 for r in rows.values())
    assert modes["open"]["requests"] >= 1 and modes["open"]["ok"] == modes["open"]["requests"]
    assert report["summary"]["cost_per_hour"] == 0.17 and report["summary"]["models"] == 2
    assert (out / "latency_throughput.png").stat().st_size > 5000
    assert "sequential response range" in (out / "report.md").read_text()


@pytest.mark.slow  # the module's store (a trace) and real server processes
def test_stop_stops_every_server_then_smoke_fails(fleet: Dict[str, Any]) -> None:
    pids = [rec["pid"] for rec in fleet["state"]["servers"].values()]
    assert cli.main(["stop", "--state-dir", str(fleet["state_dir"])]) == 0
    assert all(gone(pid) for pid in pids)
    assert read_state(fleet["state_dir"]) is None
    for rec in fleet["state"]["servers"].values():
        assert "Application shutdown complete" in Path(rec["log"]).read_text()  # a drained exit, not a kill
    assert cli.main(["stop", "--state-dir", str(fleet["state_dir"])]) == 0  # nothing left: still fine
    out = fleet["base"] / "smoke"
    assert loadtest_cli.main(["smoke", "--routes", str(fleet["routes"]), "--out", str(out), "--quiet", "--timeout", "5",
                              "--deadline-s", "0"]) == 1
    assert not any(r["ok"] for r in json.loads((out / "report.json").read_text())["modes"]["smoke"])


@pytest.mark.slow  # the module's store (a trace) and real server processes
def test_a_server_that_does_not_become_ready_stops_everything(store: Dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # cpu-0001's memory budget (1 MiB) is below its model's host memory: it answers /readyz "failed"; cpu-0000 is stopped too.
    doc = make_plan({"cpu-0000": ["tiny-a"], "cpu-0001": ["tiny-b"]})
    doc["servers"][1]["memory_budget_mib"] = 1
    plan = write_plan(tmp_path / "plan.json", doc)
    spawned: List[int] = []
    state_dir = tmp_path / "state"
    original = local.spawn

    def spy(*args: Any, **kwargs: Any) -> local.Started:
        s = original(*args, **kwargs)
        spawned.append(s.pid)
        return s

    monkeypatch.setattr(local, "spawn", spy)
    rc = cli.main(["--plan", str(plan), "--store", store["uri"], "--state-dir", str(state_dir), "--timeout", "120", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "server cpu-0001 did not become ready" in err and "over the memory budget" in err
    assert f"see its log {(state_dir / 'logs' / 'cpu-0001.log').resolve()}" in err
    assert len(spawned) == 2 and all(gone(pid) for pid in spawned)
    assert read_state(state_dir) is None


@pytest.mark.slow  # the module's store (a trace) and real server processes
def test_models_missing_from_the_store_are_refused_before_anything_starts(store: Dict[str, Any], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    plan = write_plan(tmp_path / "plan.json", make_plan({"cpu-0000": ["tiny-a", "not-traced"]}))
    assert cli.main(["--plan", str(plan), "--store", store["uri"], "--state-dir", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no entry for 1 planned model(s): not-traced (cpu, server cpu-0000)" in err
    assert not (tmp_path / "s" / "logs").exists()
    assert cli.main(["--plan", str(plan), "--store", str(tmp_path / "nowhere"), "--state-dir", str(tmp_path / "s"), "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.slow  # the module's store (a trace) and real server processes
def test_ctrl_c_during_start_stops_everything(store: Dict[str, Any], tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", make_plan({"cpu-0000": ["tiny-a"], "cpu-0001": ["tiny-b"]}))
    state_dir = tmp_path / "state"
    # Tiny models load in a second or two, so on a quiet machine both servers could be ready before
    # the interrupt lands. The server processes (they alone have SERVER_ID set) first wait here,
    # so it always lands during the start.
    slow = tmp_path / "slow-start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import os, time\nif os.environ.get('SERVER_ID'):\n    time.sleep(30)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")]))}
    # A suite run as a background job (`make test &`, nohup) inherits SIGINT ignored, and Python then
    # keeps ignoring it; a terminal's Ctrl-C reaches a process whose SIGINT is at its default.
    proc = subprocess.Popen([sys.executable, "-m", "deploy", "--plan", str(plan), "--store", store["uri"], "--state-dir",
                             str(state_dir), "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        state = wait_for(lambda: (s := _try_state(state_dir)) and len(s["servers"]) == 2 and s, 60, "both servers to be started")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert all(gone(rec["pid"]) for rec in state["servers"].values())
    assert read_state(state_dir) is None


def _try_state(state_dir: Path) -> Any:
    try:
        return read_state(state_dir)
    except Exception:  # mid-write: try again
        return None


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = ("import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        wait_for(ready.exists, 30, "the stubborn process to ignore SIGTERM")
        messages: List[str] = []
        outcome = local.stop_processes({"stubborn": {"pid": proc.pid, "create_time": local.create_time_of(proc.pid)}}, 0.3,
                                       messages.append)
        assert outcome == {"stubborn": "killed (SIGKILL)"}
        assert "did not stop within 0.3 s of SIGTERM" in messages[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_readiness_answers_are_classified() -> None:
    assert classify(200, {"status": "ready", "message": "all 2 model(s) ready"}).state == "ready"
    assert classify(503, {"status": "loading", "message": "1 model(s) not loaded yet"}).state == "loading"
    failed = classify(503, {"status": "failed", "message": "no model could be loaded", "failed": {"m": "over the memory budget"}})
    assert failed.state == "failed" and "m: over the memory budget" in failed.message
    assert classify(200, {"status": "degraded", "message": "1 model(s) failed", "failed": {"m": "x"}}).state == "failed"


def test_local_environment_follows_the_pod_contract() -> None:
    server = Server.model_validate(make_plan({"cpu-0003": ["a", "b"]}, budget=700)["servers"][0])
    env = local.server_env({"PATH": "/bin", "MODEL_IDS": "leaked", "PORT": "1"}, server, "file:///s", 4321, Path("/c"), 1)
    assert env["PATH"] == "/bin" and env["MODEL_IDS"] == "a,b" and env["PORT"] == "4321" and env["SERVER_ID"] == "cpu-0003"
    assert env["MEMORY_BUDGET_MIB"] == "700" and env["STORE_URI"] == "file:///s" and env["MODEL_CACHE_DIR"] == "/c"
    assert env["PROCESSOR"] == "cpu" and env["HOST"] == "127.0.0.1" and env["WORKERS"] == "1"
    assert local.default_workers(3, cpus=2) == 1 and local.default_workers(1, cpus=8) == 8
    assert local.normalise_store("out/store").startswith("file:///")


def test_docker_run_command_and_the_missing_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = Server.model_validate(make_plan({"cpu-0000": ["a", "b"]})["servers"][0])
    cmd = docker.run_command(server, docker.DEFAULT_IMAGE, str(tmp_path), 5555, {"AWS_REGION": "us-east-1"})
    assert cmd[:3] == ["docker", "run", "--detach"] and cmd[-1] == "modelfleet-serving:cpu"
    assert "127.0.0.1:5555:8080" in cmd and f"{tmp_path.resolve()}:/store:ro" in cmd and "--read-only" in cmd
    assert "STORE_URI=file:///store" in cmd and "MODEL_IDS=a,b" in cmd and "MEMORY_BUDGET_MIB=512" in cmd
    assert cmd[cmd.index("AWS_REGION") - 1] == "--env"  # passed by name, never its value
    s3 = docker.run_command(server, "repo/img:{processor}-1", "s3://modelfleet-b/p", 1, {})
    assert "STORE_URI=s3://modelfleet-b/p" in s3 and not any(":/store:ro" in a for a in s3) and s3[-1] == "repo/img:cpu-1"
    if docker.engine_problem() is None:
        pytest.skip("a Docker engine is reachable here: the missing-engine error cannot be shown")
    plan = write_plan(tmp_path / "plan.json", make_plan({"cpu-0000": ["a"]}))
    assert cli.main(["--runtime", "docker", "--plan", str(plan), "--store", str(tmp_path), "--state-dir", str(tmp_path / "s"),
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs a Docker engine" in err and "--runtime local" in err
    assert read_state(tmp_path / "s") is None


def test_kubernetes_without_kubectl_or_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dist = tmp_path / "dist"
    assert cli.main(["--runtime", "kubernetes", "--dist", str(dist)]) == 2
    assert "python -m charts synth" in capsys.readouterr().err
    (dist / "manifests").mkdir(parents=True)
    (dist / "manifests" / "cpu-0000.yaml").write_text("kind: ConfigMap\n")
    assert kubernetes.apply_command(dist / "manifests", "ctx")[-4:] == ["apply", "--recursive", "--filename", str(dist / "manifests")]
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # no cluster, no context (as on this machine)
    if kubernetes.shutil.which("kubectl"):
        assert cli.main(["--runtime", "kubernetes", "--dist", str(dist)]) == 2
        err = capsys.readouterr().err
        assert "no" in err and "current context" in err and "npx cdk deploy" in err
    monkeypatch.setenv("PATH", str(tmp_path))  # and no kubectl at all
    assert cli.main(["--runtime", "kubernetes", "--dist", str(dist)]) == 2
    err = capsys.readouterr().err
    assert "kubectl, which is not installed" in err and "npx cdk deploy" in err
