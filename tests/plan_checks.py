"""Plans checked by the independent ../shared/tools/check_plan.py, for any test that makes one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHECK_PLAN = Path(os.environ.get("MODELFLEET_CHECK_PLAN", ROOT.parent / "shared" / "tools" / "check_plan.py"))
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def check_plan(workdir: Path, model_dicts: List[dict], catalogue_dict: Optional[dict], plan_json: dict,
               max_util: float, max_dev_mib: float, instances_path: Optional[Path] = None) -> dict:
    """Runs the independent checker; fails the test with its reason on a violation."""
    if not CHECK_PLAN.is_file():
        pytest.skip(f"{CHECK_PLAN} not found")
    models_path = write_yaml(workdir / "models.yaml", {"models": model_dicts})
    if instances_path is None:
        # check_plan.py reads device_memory_gib of every server's type, cpu ones too (where it is
        # optional and unused): give the checker's copy one. The planner never saw it.
        catalogue_dict = json.loads(json.dumps(catalogue_dict))
        for t in catalogue_dict["instances"]:
            if t["processor"] == "cpu":
                t.setdefault("device_memory_gib", t["memory_gib"])
    inst_path = instances_path or write_yaml(workdir / "instances.yaml", catalogue_dict)
    plan_path = workdir / "plan.json"
    plan_path.write_text(json.dumps(plan_json), encoding="utf-8")
    proc = subprocess.run([PYTHON, str(CHECK_PLAN), str(models_path), str(inst_path), str(plan_path),
                           repr(max_util), repr(max_dev_mib)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"check_plan.py rejects the plan: {proc.stdout}{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


