"""Running ../shared/tools/check_manifests.py (the independent manifest checker) on a synthesized dist/.

The checker validates custom objects against the CRDs in the `crds/` folder beside its own `tools/`
folder and every other object as core Kubernetes 1.36 (strict), which refuses a kind it has no schema
for. ../shared/crds/ holds the Gateway API only, and ../shared is read-only here, so a dist/ with KEDA
ScaledObjects is checked by the very same script file run from a temporary folder whose `crds/` holds
../shared/crds/ and the CRDs vendored under tests/crds/ that the caller names. The script is copied,
not linked: it finds `crds/` from its own resolved path. A module, not a test file, so tests import it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CHECKER = SHARED / "tools" / "check_manifests.py"
VENDORED_CRDS = ROOT / "tests" / "crds"


def run_check_manifests(plan: Path, instances: Path, dist: Path, workdir: Path,
                        extra_crds: Iterable[str] = ()) -> subprocess.CompletedProcess:
    """The checker's result for `dist`; `extra_crds` are folder names under tests/crds/ to add to its CRDs."""
    extra = list(extra_crds)
    checker = CHECKER
    if extra:
        stage = workdir / "shared-checker"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "tools").mkdir(parents=True)
        checker = Path(shutil.copy2(CHECKER, stage / "tools" / CHECKER.name))
        shutil.copytree(SHARED / "crds", stage / "crds")
        for name in extra:
            source = VENDORED_CRDS / name
            if not source.is_dir():
                raise FileNotFoundError(f"{source}: no such vendored CRD folder (see tests/crds/)")
            shutil.copytree(source, stage / "crds" / name)
    return subprocess.run([sys.executable, str(checker), str(plan), str(instances), str(dist)],
                          capture_output=True, text=True, timeout=280)
