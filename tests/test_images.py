"""The server's images (issue 4, item 5): serving/docker/Dockerfile.{cpu,gpu,inf1,inf2} and `python -m serving build`.

- checkov's Dockerfile checks pass on all four (checkov runs from its own environment, .venv-checkov/, made by
  `make checkov-env`; MODELFLEET_CHECKOV may name another checkov executable);
- each Dockerfile's final stage: non-root numeric USER, HEALTHCHECK, EXPOSE 8080, the pod contract's CMD, no build tools;
- each image's CMD starts the server when run here with the pod contract's environment, and its HEALTHCHECK passes;
- the build step: its docker command per processor, exit 2 and the exact command where no Docker engine answers;
- serving/build.py runs on Python 3.10 (vermin), since it is copied into the Neuron images with serving/.
No Docker engine is needed: nothing here builds an image.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from serving import build as serving_build
from tests.fixtures_net import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "serving" / "docker"
PROCESSORS = ("cpu", "gpu", "inf1", "inf2")
SERVER_CMD = ["python", "-m", "serving"]
# What a build context may contribute to an image: the server's packages and its requirements (not tracing/, packing/).
CONTEXT_SOURCES = {"contracts/", "store/", "serving/", "loadtest/", "serving/docker/requirements-serve.txt"}
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc1|clang|build-essential|make|cmake|python3?(\.\d+)?-dev|libpython3?(\.\d+)?-dev|gnupg|curl|wget)\b"
)
SERVER_PACKAGES = {"torch", "tokenizers", "fastapi", "uvicorn", "prometheus-client", "pydantic", "pyyaml", "boto3", "numpy",
                   "uvloop", "httptools", "orjson"}  # the last three: its fast path (serving/server.py, serving/json_codec.py)
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0


# ---- a small Dockerfile reader (enough for these files: continuation lines, comments, JSON exec forms) ----

@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


def read_dockerfile(path: Path) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if text.startswith("#") or (not text and not pending):
            continue  # comments, also between continuation lines, are dropped as Docker does
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        pending += text
        keyword, _, value = pending.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        pending = ""
    assert not pending, f"{path.name}: the file ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if ins.keyword != "ARG" or result:  # ARGs before the first FROM belong to no stage
            assert result, f"line {ins.line}: {ins.keyword} before any FROM"
            result[-1].append(ins)
    return result


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for item in shlex.split(ins.value):
                name, sep, value = item.partition("=")
                assert sep, f"line {ins.line}: write ENV as NAME=value, got {item!r}"
                env[name] = value
    return env


def exec_form(value: str, where: str) -> list[str]:
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"{where} must be in exec form (a JSON array), not shell form: {value!r}")
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), f"{where}: {value!r}"
    return argv


def healthcheck_argv(stage: list[Instruction], where: str) -> list[str]:
    checks = [ins for ins in stage if ins.keyword == "HEALTHCHECK"]
    assert len(checks) == 1, f"{where}: the final stage needs exactly one HEALTHCHECK, found {len(checks)}"
    match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.+)", checks[0].value)
    assert match, f"{where}: HEALTHCHECK must be `HEALTHCHECK [--options] CMD [...]`, got {checks[0].value!r}"
    return exec_form(match.group(2), f"{where} HEALTHCHECK CMD")


def final_stage(processor: str) -> list[Instruction]:
    return stages(read_dockerfile(DOCKER_DIR / f"Dockerfile.{processor}"))[-1]


def local_argv(argv: list[str]) -> list[str]:
    """An image's command line, run with this interpreter."""
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


# ---- checkov ----

def checkov_executable() -> str:
    named = os.environ.get("MODELFLEET_CHECKOV", "").strip()
    candidate = named or str(ROOT / ".venv-checkov" / "bin" / "checkov")
    found = shutil.which(candidate)
    if found is None:
        where = f"MODELFLEET_CHECKOV={named!r}" if named else f"{candidate}"
        pytest.fail(f"checkov not found ({where} is not an executable): run `make checkov-env` to create its own "
                    "environment .venv-checkov/, or set MODELFLEET_CHECKOV to a checkov executable")
    return found


def test_checkov_dockerfile_checks_pass():
    command = [checkov_executable(), "-d", "serving/docker", "--framework", "dockerfile", "--compact", "-o", "json"]
    # BC_SKIP_MAPPING: no download of the platform's check mapping (a network call, and a traceback without one).
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    start = min((i for i in (done.stdout.find("{"), done.stdout.find("[")) if i >= 0), default=-1)
    assert start >= 0, f"checkov printed no JSON (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout[start:])
    reports = report if isinstance(report, list) else [report]
    dockerfile = [r for r in reports if r.get("check_type") == "dockerfile"]
    assert dockerfile, f"checkov scanned no Dockerfile under serving/docker: {report}"
    results = dockerfile[0]["results"]
    failed = [f"{f['check_id']} {f['file_path']}:{f['file_line_range']} {f['check_name']}" for f in results["failed_checks"]]
    assert not failed, "checkov's Dockerfile checks failed:\n" + "\n".join(failed)
    assert not results.get("parsing_errors"), f"checkov could not parse: {results['parsing_errors']}"
    passed: dict[str, set[str]] = {}
    for check in results["passed_checks"]:
        passed.setdefault(Path(check["file_path"]).name, set()).add(check["check_id"])
    # Each Dockerfile was read, and the checks that matter most here ran on it and passed: HEALTHCHECK (2), a USER (3),
    # no `latest` base (7), the last USER not root (8), unique stage names (11), no sudo (CKV2_DOCKER_1).
    essential = {"CKV_DOCKER_2", "CKV_DOCKER_3", "CKV_DOCKER_7", "CKV_DOCKER_8", "CKV_DOCKER_11", "CKV2_DOCKER_1"}
    for processor in PROCESSORS:
        name = f"Dockerfile.{processor}"
        missing = essential - passed.get(name, set())
        assert not missing, f"{name}: checkov did not pass {sorted(missing)} (passed: {sorted(passed.get(name, set()))})"
    assert done.returncode == 0, f"checkov exited {done.returncode}:\n{done.stderr[-3000:]}"


# ---- the Dockerfiles' own rules ----

@pytest.mark.parametrize("processor", PROCESSORS)
def test_dockerfile_final_stage(processor):
    name = f"Dockerfile.{processor}"
    all_stages = stages(read_dockerfile(DOCKER_DIR / name))
    assert len(all_stages) >= 2, f"{name}: multi-stage, a builder stage and a runtime stage"
    stage = all_stages[-1]

    names: set[str] = set()
    for first in (s[0] for s in all_stages):
        words = [w for w in first.value.split() if not w.startswith("--")]
        image = words[0]
        if len(words) == 3 and words[1].upper() == "AS":
            names.add(words[2].lower())
        if image.lower() in names - {words[-1].lower()}:
            continue  # FROM an earlier stage
        assert re.search(r":\w[\w.-]*$|@sha256:[0-9a-f]{64}$", image) and not image.endswith(":latest"), \
            f"{name} line {first.line}: pin the base image by tag or digest, got {image!r}"
    runtime_base = [w for w in stage[0].value.split() if not w.startswith("--")][0]
    assert not re.search(r"devel|-sdk|build", runtime_base), f"{name}: the runtime stage's base must not be a build image"

    users = [ins for ins in stage if ins.keyword == "USER"]
    assert users, f"{name}: the final stage needs a USER"
    uid = users[-1].value.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, \
        f"{name}: USER must be a numeric non-root UID (Kubernetes runAsNonRoot checks it), got {users[-1].value!r}"
    after_user = [ins.keyword for ins in stage[stage.index(users[-1]) + 1:]]
    assert not {"RUN", "USER"} & set(after_user), f"{name}: nothing runs as root after the final USER"

    argv = healthcheck_argv(stage, name)
    assert argv[0] == "python" and "/healthz" in " ".join(argv) and "127.0.0.1" in " ".join(argv), \
        f"{name}: HEALTHCHECK should ask the server's /healthz on 127.0.0.1 with python (no curl in slim images): {argv}"

    cmds = [ins for ins in stage if ins.keyword == "CMD"]
    assert len(cmds) == 1, f"{name}: one CMD in the final stage"
    assert exec_form(cmds[0].value, f"{name} CMD") == SERVER_CMD
    assert not [ins for s in all_stages for ins in s if ins.keyword == "ENTRYPOINT"], f"{name}: no ENTRYPOINT: the CMD is the command"

    exposed = {port for ins in stage if ins.keyword == "EXPOSE" for port in ins.value.split()}
    assert exposed == {"8080"}, f"{name}: EXPOSE 8080 (the pod contract's PORT), got {exposed}"

    env = env_of(stage)
    for key, value in {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "PORT": "8080",
                       "PROCESSOR": processor}.items():
        assert env.get(key) == value, f"{name}: ENV {key}={value} in the final stage, got {env.get(key)!r}"

    workdirs = [ins.value for ins in stage if ins.keyword == "WORKDIR"]
    assert workdirs and all(w.startswith("/") for w in workdirs), f"{name}: an absolute WORKDIR, got {workdirs}"

    for ins in stage:
        if ins.keyword == "RUN":
            tool = BUILD_TOOLS.search(ins.value)
            assert tool is None, f"{name} line {ins.line}: no build tools in the final stage ({tool.group(0) if tool else ''})"
            assert not re.search(r"\bpip3?\b.*\binstall\b", ins.value), f"{name} line {ins.line}: install Python packages in the builder"
            if "apt-get install" in ins.value:
                assert "--no-install-recommends" in ins.value and "rm -rf /var/lib/apt/lists" in ins.value, \
                    f"{name} line {ins.line}: apt-get install --no-install-recommends, and remove the lists"


@pytest.mark.parametrize("processor", PROCESSORS)
def test_dockerfile_copies_only_the_server(processor):
    name = f"Dockerfile.{processor}"
    instructions = read_dockerfile(DOCKER_DIR / name)
    assert not [ins for ins in instructions if ins.keyword == "ADD"], f"{name}: COPY, never ADD"
    sources: set[str] = set()
    for ins in instructions:
        if ins.keyword == "COPY" and "--from=" not in ins.value:
            parts = [p for p in shlex.split(ins.value) if not p.startswith("--")]
            sources.update(parts[:-1])
    assert sources <= CONTEXT_SOURCES, \
        f"{name}: copies {sorted(sources - CONTEXT_SOURCES)} from the context; only {sorted(CONTEXT_SOURCES)}"
    assert {"contracts/", "store/", "serving/"} <= sources, f"{name}: the image needs contracts/, store/ and serving/"
    if processor == "cpu":  # the pipeline's smoke Job (stacks/smoke.py) runs the cpu image's python -m loadtest smoke
        assert "loadtest/" in sources, f"{name}: the smoke Job needs loadtest/"
    stage = stages(instructions)[-1]
    from_builder = [ins for ins in stage if ins.keyword == "COPY" and "--from=" in ins.value]
    assert from_builder, f"{name}: the runtime stage takes the builder's environment"


def test_dockerignore_files_keep_the_context_small():
    # BuildKit reads serving/docker/Dockerfile.<p>.dockerignore for `docker build -f serving/docker/Dockerfile.<p> .`
    texts = {p: (DOCKER_DIR / f"Dockerfile.{p}.dockerignore").read_text() for p in PROCESSORS}
    assert len(set(texts.values())) == 1, "the four Dockerfile.*.dockerignore files should be identical"
    patterns = [line.strip() for line in texts["cpu"].splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert patterns[0] == "*", "an allowlist: ignore everything, then let the server's sources back in"
    allowed = {p[1:] for p in patterns if p.startswith("!")}
    for source in CONTEXT_SOURCES:
        assert source in allowed or source.rstrip("/") in allowed, f"{source} must be let back into the context"
    assert not {".venv/", "tracing/", "packing/", "tests/"} & allowed


def _serve_pins(path: Path, python_version: str) -> dict[str, str]:
    environment = {"python_version": python_version, "python_full_version": python_version + ".0"}
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: pin {req.name} with ==, got {line!r}"
        key = req.name.lower().replace("_", "-")
        assert key not in pins, f"{path.name}: two pins of {req.name} for Python {python_version}"
        pins[key] = specs[0].version
    return pins


def test_requirements_serve_pins_match_the_project():
    serve = DOCKER_DIR / "requirements-serve.txt"
    project = _serve_pins(ROOT / "requirements.txt", "3.11")
    wanted = SERVER_PACKAGES - {"torch"}
    for version in ("3.10", "3.11", "3.12"):  # inf1/inf2 (Ubuntu 22.04), cpu (python:3.11-slim), gpu (Ubuntu 24.04)
        pins = _serve_pins(serve, version)
        assert set(pins) == wanted, f"Python {version}: requirements-serve.txt pins {sorted(pins)}, the server needs {sorted(wanted)}"
        if version != "3.10":  # 3.10 (the Neuron images) has its own fastapi and numpy, stated in the file
            diff = {n: (v, project.get(n)) for n, v in pins.items() if project.get(n) != v}
            assert not diff, f"requirements-serve.txt and requirements.txt disagree (serve, project): {diff}"
    assert project.get("torch") == "2.13.0"
    for processor in ("cpu", "gpu"):
        text = (DOCKER_DIR / f"Dockerfile.{processor}").read_text()
        assert "torch==2.13.0" in text, f"Dockerfile.{processor}: torch==2.13.0 as requirements.txt"


# ---- each CMD starts the server here ----

def _wait_for_healthz(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    last = "no answer yet"
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode} before answering {url}:\n{log.read_text()[-6000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer 200 within {START_DEADLINE_S:g} s ({last}):\n{log.read_text()[-6000:]}")
        time.sleep(0.1)  # poll interval, bounded by the deadline above


@pytest.mark.parametrize("processor", PROCESSORS)
def test_cmd_starts_the_server_here(processor, tmp_path):
    stage = final_stage(processor)
    cmd = exec_form([ins for ins in stage if ins.keyword == "CMD"][-1].value, f"Dockerfile.{processor} CMD")
    healthcheck = healthcheck_argv(stage, f"Dockerfile.{processor}")
    store = tmp_path / "store"  # an empty file store: the assigned model is missing, the server lives on
    store.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MODEL_", "STORE_", "SERVER_"))}
    # The image's own settings (PYTHONDONTWRITEBYTECODE, HF_HUB_OFFLINE, PROCESSOR, ...), but not its paths.
    env.update({k: v for k, v in env_of(stage).items() if k not in {"PATH", "VIRTUAL_ENV", "HOME", "LD_LIBRARY_PATH"}})
    env.update({  # the pod contract
        "SERVER_ID": f"{processor}-0001",
        "MODEL_IDS": "absent-model",
        "STORE_URI": f"file://{store}",
        "MEMORY_BUDGET_MIB": "1024",
        "PORT": str(port),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "TMPDIR": str(tmp_path),
        "HOST": "127.0.0.1",  # tests bind loopback; a pod binds 0.0.0.0 (the default)
        "GRACE_SECONDS": "10",
    })
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(local_argv(cmd), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_healthz(proc, f"http://127.0.0.1:{port}/healthz", log)
        probe = subprocess.run(local_argv(healthcheck), env=env, capture_output=True, text=True, timeout=30, check=False)
        assert probe.returncode == 0, f"Dockerfile.{processor}'s HEALTHCHECK failed against the live server:\n{probe.stderr[-3000:]}"
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit within {STOP_DEADLINE_S:g} s of SIGTERM:\n{log.read_text()[-6000:]}")
        assert code == 0, f"the server exited with {code} after SIGTERM:\n{log.read_text()[-6000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# ---- the build step ----

def _engine_unreachable() -> bool:
    if shutil.which("docker") is None:
        return True
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode != 0
    except subprocess.TimeoutExpired:
        return True


@pytest.mark.parametrize("processor", PROCESSORS)
def test_build_command(processor):
    tag = f"modelfleet-serving:{processor}"
    command = serving_build.build_command(processor, tag)
    assert command == ["docker", "build", "--platform", "linux/amd64", "-f", f"serving/docker/Dockerfile.{processor}", "-t", tag, "."]
    assert (ROOT / command[5]).is_file()
    assert serving_build.default_tag(processor) == tag


def test_build_command_rejects_unknown_processor():
    with pytest.raises(ValueError, match="cpu, gpu, inf1, inf2"):
        serving_build.build_command("tpu", "x:y")


def test_push_reference():
    ecr = "123456789012.dkr.ecr.us-east-1.amazonaws.com/modelfleet-serving"
    assert serving_build.push_reference(ecr, "modelfleet-serving:inf2") == f"{ecr}:inf2"
    assert serving_build.push_reference("localhost:5000/serving", "modelfleet-serving") == "localhost:5000/serving:latest"
    for bad in (f"{ecr}:v1", f"{ecr}@sha256:" + "0" * 64, "", "a b"):
        with pytest.raises(ValueError):
            serving_build.push_reference(bad, "modelfleet-serving:cpu")


def test_build_dry_run_prints_the_command(capsys, monkeypatch):
    monkeypatch.setattr(serving_build.subprocess, "run", lambda *a, **k: pytest.fail("--dry-run must run nothing"))
    assert serving_build.main_for_tests(["build", "--processor", "gpu", "--tag", "serving:test", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "docker build --platform linux/amd64 -f serving/docker/Dockerfile.gpu -t serving:test ." in out


def test_build_without_engine_exits_2_with_the_command(capsys):
    if not _engine_unreachable():
        pytest.skip("a Docker engine answers `docker info` here: the no-engine message cannot be seen")
    assert serving_build.main_for_tests(["build", "--processor", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no Docker engine is reachable here (docker info failed: " in err
    assert "build on a machine with Docker, or in CI, with:" in err
    assert "docker build --platform linux/amd64 -f serving/docker/Dockerfile.cpu -t modelfleet-serving:cpu ." in err


def test_python_m_serving_build_without_engine():
    """The CLI as the issue names it: serving/cli.py registers serving.build.add_build_parser."""
    if not _engine_unreachable():
        pytest.skip("a Docker engine answers `docker info` here: the no-engine message cannot be seen")
    done = subprocess.run([sys.executable, "-m", "serving", "build", "--processor", "cpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, (
        f"`python -m serving build --processor cpu` exited {done.returncode}, expected 2 (no engine); "
        f"serving/cli.py must call serving.build.add_build_parser(sub):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )
    assert "no Docker engine is reachable here (docker info failed: " in done.stderr
    assert "-f serving/docker/Dockerfile.cpu -t modelfleet-serving:cpu ." in done.stderr


def test_build_runs_docker_where_an_engine_answers(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(serving_build, "docker_engine_problem", lambda: None)
    monkeypatch.setattr(serving_build.subprocess, "run", fake_run)
    repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/modelfleet-serving"
    assert serving_build.main_for_tests(["build", "--processor", "inf1", "--push", repo]) == 0
    (build, build_kwargs), (push, _) = calls
    assert build == serving_build.build_command("inf1", "modelfleet-serving:inf1", extra_tags=[f"{repo}:inf1"])
    assert build_kwargs["cwd"] == ROOT and build_kwargs["env"]["DOCKER_BUILDKIT"] == "1"
    assert push == ["docker", "push", f"{repo}:inf1"]

    def failing_build(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 3)

    calls.clear()
    monkeypatch.setattr(serving_build.subprocess, "run", failing_build)
    assert serving_build.main_for_tests(["build", "--processor", "cpu", "--push", repo]) == 3
    assert len(calls) == 1, "no push after a failed build"


def test_engine_problem_without_docker_cli(monkeypatch):
    monkeypatch.setattr(serving_build.shutil, "which", lambda name: None)
    assert serving_build.docker_engine_problem() == "docker info failed: the docker command is not installed"


def test_build_module_runs_on_python_310():
    vermin = Path(sys.executable).parent / "vermin"
    command = [str(vermin) if vermin.exists() else "vermin", "--target=3.10-", "--no-tips", "--violations", "serving/build.py"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"serving/build.py needs a Python newer than 3.10:\n{done.stdout}\n{done.stderr}"
