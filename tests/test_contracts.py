"""Contracts: errors that name file, entry and field; atomic writes; Python 3.10 compatibility."""
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import ContractError, InstanceCatalogue, ModelCatalogue, Plan, load, write_atomic

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_error_names_file_entry_and_field(tmp_path):
    p = write(tmp_path, "models.yaml", "models:\n  - {id: a, rps: 1}\n  - {id: b, rps: -3}\n")
    with pytest.raises(ContractError) as err:
        load(ModelCatalogue, p)
    assert str(err.value) == "models.yaml: models[1].rps: must be >= 0, got -3"


def test_every_problem_is_listed(tmp_path):
    p = write(tmp_path, "models.yaml", "models:\n  - {id: Bad_Id, rps: x, typo: 1}\n")
    with pytest.raises(ContractError) as err:
        load(ModelCatalogue, p)
    text = str(err.value)
    assert "models[0].id: must be a DNS label" in text
    assert "models[0].rps: must be a number, got 'x'" in text
    assert "models[0].typo: is not a known field" in text


def test_duplicate_ids_and_p90_below_p50(tmp_path):
    p = write(tmp_path, "m.yaml", "models:\n  - {id: a, rps: 1}\n  - {id: a, rps: 2}\n")
    with pytest.raises(ContractError, match=r"models\[1\]\.id 'a' repeats models\[0\]\.id"):
        load(ModelCatalogue, p)
    p = write(tmp_path, "p.yaml", "models:\n  - {id: a, rps: 1, profiles: {inf1: "
                                  "{device_memory_mib: 1, host_memory_mib: 1, latency_ms: 5, latency_p90_ms: 4}}}\n")
    with pytest.raises(ContractError, match="below latency_ms"):
        load(ModelCatalogue, p)


def test_accelerator_rows_need_devices(tmp_path):
    p = write(tmp_path, "i.yaml", "instances:\n  - {name: inf1.x, processor: inf1, price_per_hour: 1, vcpu: 4, "
                                  "memory_gib: 8, device_memory_gib: 8, max_pods: 10}\n")
    with pytest.raises(ContractError, match="instances\\[0\\]: inf1 instance 'inf1.x' needs devices"):
        load(InstanceCatalogue, p)


def test_unreadable_files(tmp_path):
    with pytest.raises(ContractError, match="no such file"):
        load(ModelCatalogue, tmp_path / "missing.yaml")
    with pytest.raises(ContractError, match="not valid YAML at line 3"):
        load(ModelCatalogue, write(tmp_path, "bad.yaml", "models:\n  - {id: a, rps: [1\n"))
    with pytest.raises(ContractError, match="must be a mapping"):
        load(ModelCatalogue, write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_plan_rejects_a_model_on_two_servers():
    server = {"instance_type": "inf1.xlarge", "processor": "inf1", "replicas": 1,
              "placements": [{"instance_index": 0, "device_index": 0}], "models": ["m"],
              "requests": {"cpu_m": 1, "memory_mib": 1}, "memory_budget_mib": 1,
              "predicted": {"utilisation": 0.1, "p90_ms": 1}}
    data = {"schema": 1, "inputs": {}, "options": {}, "solver": {}, "instances": {"inf1.xlarge": 2},
            "cost_per_hour": 1, "platform_per_hour": 0, "lower_bound_per_hour": 1, "gap": 0, "solve_seconds": 0,
            "created_at": "now", "servers": [{**server, "id": "inf1-0000"}, {**server, "id": "inf1-0001"}],
            "profile_sources": {}}
    with pytest.raises(ValueError, match="each model has one server"):
        Plan.model_validate(data)


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "plan.json"
    target.write_text("old")

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("contracts.loading.os.replace", boom)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_contracts_run_on_python_3_10():
    """contracts/ also runs in the Neuron images (Python 3.10): vermin must find nothing newer."""
    vermin = Path(sys.executable).parent / "vermin"
    out = subprocess.run([str(vermin), "--target=3.10-", "--no-tips", "--violations", str(ROOT / "contracts")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
