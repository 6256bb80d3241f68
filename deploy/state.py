"""The state directory (default .modelfleet/): what a deployment started, so `python -m deploy stop` can stop it.

  state.json         runtime, plan, store, routes.json's path and, per server, its pid (local) or container (docker)
  routes.json        the deployment's routes (ARCHITECTURE.md), for `python -m loadtest --routes`
  logs/<server>.log  each local server's output
  cache/<server>/    each local server's MODEL_CACHE_DIR

state.json is written after every server that starts, so an interrupted start leaves a record that stop can use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from contracts import ContractError, write_json_atomic

STATE_FILE = "state.json"
DEFAULT_STATE_DIR = Path(".modelfleet")


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def read_state(state_dir: Path) -> Optional[Dict[str, Any]]:
    """The recorded deployment, or None where there is none."""
    path = state_path(state_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ContractError(f"{path}: cannot read the deployment's state ({exc}); stop its processes by hand and delete it") from None
    if not isinstance(data, dict) or "runtime" not in data or not isinstance(data.get("servers"), dict):
        raise ContractError(f"{path}: not a deployment state file (no runtime or servers)")
    return data


def write_state(state_dir: Path, state: Dict[str, Any]) -> Path:
    return write_json_atomic(state_path(state_dir), state)


def clear_state(state_dir: Path) -> None:
    path = state_path(state_dir)
    if path.exists():
        path.unlink()
