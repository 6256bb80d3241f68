"""The stacks' charts cache (.cdk-dist/<env>/) is remade when the code that writes it changes."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from stacks.dist_cache import CODE_PACKAGES, INSTANCES_FILE, code_digest, code_files, dist_inputs

ROOT = Path(__file__).resolve().parent.parent


def _copy_code(dst: Path) -> Path:
    """A copy of what the key reads (charts/, contracts/, the instance catalogue), to edit freely."""
    for package in CODE_PACKAGES:
        shutil.copytree(ROOT / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / INSTANCES_FILE).parent.mkdir(parents=True)
    shutil.copy(ROOT / INSTANCES_FILE, dst / INSTANCES_FILE)
    return dst


def test_code_digest_is_order_free_and_sees_bytes_names_boundaries_and_versions():
    files = [("charts/a.py", b"x = 1\n"), ("contracts/b.py", b"y = 2\n")]
    versions = {"cdk8s": "2.70.115", "cdk8s-plus-36": "2.0.3"}
    base = code_digest(files, versions)
    assert code_digest(list(reversed(files)), dict(reversed(list(versions.items())))) == base
    assert code_digest([("charts/a.py", b"x = 2\n"), files[1]], versions) != base
    assert code_digest([("charts/c.py", b"x = 1\n"), files[1]], versions) != base
    # the same bytes cut at another place between two files
    assert code_digest([("charts/a.py", b"x = 1\ny"), ("contracts/b.py", b" = 2\n")], versions) != base
    assert code_digest(files, {**versions, "cdk8s-plus-36": "2.0.4"}) != base
    assert code_digest(files, {"cdk8s": "2.70.115"}) != base


def test_key_follows_charts_and_contracts_sources_and_the_catalogue(tmp_path):
    root = _copy_code(tmp_path / "repo")
    plan, config = b'{"servers": []}', "environment: dev\n"
    first = dist_inputs(root, plan, config).key
    # Unchanged inputs, and files the key does not read (bytecode, other packages), leave it alone.
    (root / "charts" / "__pycache__").mkdir(exist_ok=True)
    (root / "charts" / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"\0stale")
    (root / "tracing").mkdir()
    (root / "tracing" / "heads.py").write_text("X = 1\n")
    assert dist_inputs(root, plan, config).key == first

    server = root / "charts" / "server.py"
    original = server.read_bytes()
    server.write_bytes(original + b"\n# an edit\n")
    edited = dist_inputs(root, plan, config).key
    assert edited != first
    server.write_bytes(original)
    assert dist_inputs(root, plan, config).key == first

    (root / "contracts" / "pod.py").write_bytes((root / "contracts" / "pod.py").read_bytes() + b"\n")
    assert dist_inputs(root, plan, config).key not in (first, edited)


def test_key_changes_with_a_new_module_and_with_plan_or_config(tmp_path):
    root = _copy_code(tmp_path / "repo")
    plan, config = b'{"servers": []}', "environment: dev\n"
    first = dist_inputs(root, plan, config)
    (root / "charts" / "extra").mkdir()
    (root / "charts" / "extra" / "rules.py").write_text("LIMIT = 3\n")
    assert dist_inputs(root, plan, config).code_sha256 != first.code_sha256
    assert dist_inputs(root, plan + b" ", config).key != first.key
    assert dist_inputs(root, plan, config + "#\n").key != first.key


def test_a_missing_package_or_catalogue_is_named(tmp_path):
    root = _copy_code(tmp_path / "repo")
    (root / INSTANCES_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="instances.yaml is missing"):
        code_files(root)
    shutil.rmtree(root / "contracts")
    with pytest.raises(FileNotFoundError, match="contracts is missing"):
        code_files(root)


def test_ensure_dist_synthesizes_again_after_a_charts_edit(tmp_path, monkeypatch):
    """ensure_dist on a copy of the code, `charts synth` replaced by a stand-in that counts its runs."""
    from stacks import app
    from stacks.settings import load_env

    root = _copy_code(tmp_path / "repo")
    monkeypatch.setattr(app, "REPO_ROOT", root)
    runs = []

    def fake_run(command, **kw):
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        runs.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(app.subprocess, "run", fake_run)
    settings = load_env("dev", plan=str(ROOT / "plans" / "dev.json"))
    cache = tmp_path / "cache"
    app.ensure_dist(settings, None, cache_dir=str(cache))
    app.ensure_dist(settings, None, cache_dir=str(cache))
    assert len(runs) == 1, "an unchanged input set must reuse the cached dist"
    assert runs[0][runs[0].index("--instances") + 1] == str(root / INSTANCES_FILE)
    naming = root / "charts" / "naming.py"
    naming.write_text(naming.read_text() + "\n# a change to how objects are named\n")
    app.ensure_dist(settings, None, cache_dir=str(cache))
    assert len(runs) == 2, "an edit to charts/ must make the dist again"
    assert (cache / "dev.inputs").read_text() == dist_inputs(
        root, settings.plan_path.read_bytes(),
        (cache / "dev.config.yaml").read_text()).key
