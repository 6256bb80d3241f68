"""The pod contract (ARCHITECTURE.md, "Pod contract"): the environment of one server process, built from a
plan server. Every runtime starts its servers with it: the charts (a Deployment's env), `deploy local`
(a process) and `deploy docker` (a container); each adds only what is its own (the local runtime's HOST and
WORKERS, say) and never restates these variables.

Kept to Python 3.10 syntax: this package also runs inside the Neuron images.
"""
from __future__ import annotations

from typing import Dict, Optional

from contracts.models import Server

PORT = 8080
MODEL_CACHE_DIR = "/var/cache/modelfleet"  # an emptyDir in a pod: the root filesystem is read-only
GRACE_SECONDS = 25  # the server's drain time after SIGTERM (serving's GRACE_SECONDS default)
SERVER_LABEL = "modelfleet.io/server"  # on every pod of a server (and its other objects): selects its pods

# Every variable pod_env sets, in its order: a runtime that inherits its own environment drops these first,
# so a value of the calling shell never leaks into a server.
POD_ENV_NAMES = ("SERVER_ID", "MODEL_IDS", "STORE_URI", "MEMORY_BUDGET_MIB", "PORT", "MODEL_CACHE_DIR", "PROCESSOR",
                 "GRACE_SECONDS")


def pod_env(server: Server, store_uri: str, *, port: int = PORT, cache_dir: str = MODEL_CACHE_DIR,
            processor: Optional[str] = None, grace_seconds: float = GRACE_SECONDS) -> Dict[str, str]:
    """The server's environment, in POD_ENV_NAMES order. `processor` overrides the plan's (the local runtime
    may serve a gpu plan's models with cpu entries); MODEL_IDS is comma-separated, in the plan's order."""
    return {
        "SERVER_ID": server.id,
        "MODEL_IDS": ",".join(server.models),
        "STORE_URI": store_uri,
        "MEMORY_BUDGET_MIB": str(server.memory_budget_mib),
        "PORT": str(port),
        "MODEL_CACHE_DIR": str(cache_dir),
        "PROCESSOR": processor or server.processor,
        "GRACE_SECONDS": f"{grace_seconds:g}",
    }
