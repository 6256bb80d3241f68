"""The key of the stacks' cached `charts synth` output (.cdk-dist/<env>/, stacks.app.ensure_dist).

A cached dist is reused only while everything that shapes it is unchanged: the plan, the effective config,
and the code that writes it: the source of charts/ and contracts/, the instance catalogue it checks the
plan against, and the cdk8s packages that render the objects. Keyed on the plan and config alone, an edit
to charts/ left an old dist in place and the stacks deployed what the previous code wrote.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

CODE_PACKAGES: Tuple[str, ...] = ("charts", "contracts")
INSTANCES_FILE = "config/instances.yaml"


@dataclass(frozen=True)
class DistInputs:
    """The digests a cached dist was made from; `key` is what the stamp file beside it holds."""

    plan_sha256: str
    config_sha256: str
    code_sha256: str

    @property
    def key(self) -> str:
        return f"plan {self.plan_sha256}\nconfig {self.config_sha256}\ncode {self.code_sha256}\n"


def code_digest(files: Iterable[Tuple[str, bytes]], versions: Mapping[str, str]) -> str:
    """sha256 over (relative path, bytes) pairs, in path order, and the package versions, by name. Each
    part is length-prefixed, so moving bytes from one file to the next, or renaming a file, changes it."""
    h = hashlib.sha256()
    for rel, data in sorted(files):
        name = rel.encode()
        h.update(b"file %d %d\n" % (len(name), len(data)))
        h.update(name)
        h.update(data)
    for package, version in sorted(versions.items()):
        h.update(f"package {package} {version}\n".encode())
    return h.hexdigest()


def code_files(root: Path, packages: Sequence[str] = CODE_PACKAGES,
               extra: Sequence[str] = (INSTANCES_FILE,)) -> List[Tuple[str, bytes]]:
    """Every .py under root/<package> (subfolders too) and the `extra` files, as (path relative to root, bytes)."""
    out: List[Tuple[str, bytes]] = []
    for package in packages:
        folder = root / package
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: the charts cache key reads the source of "
                                    f"{', '.join(packages)} under the repository root {root}")
        out += [(p.relative_to(root).as_posix(), p.read_bytes()) for p in folder.rglob("*.py")]
    for rel in extra:
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: charts synth reads it, so the charts cache key does too")
        out.append((rel, path.read_bytes()))
    return out


def cdk8s_versions() -> Dict[str, str]:
    """Installed versions of cdk8s and every cdk8s-plus-* package, by normalised name."""
    found: Dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name == "cdk8s" or name.startswith("cdk8s-plus"):
            found[name] = dist.version
    return found


def dist_inputs(root: Path, plan: bytes, config_text: str) -> DistInputs:
    """The digests of one environment's charts inputs, the code under `root` included."""
    return DistInputs(plan_sha256=hashlib.sha256(plan).hexdigest(),
                      config_sha256=hashlib.sha256(config_text.encode()).hexdigest(),
                      code_sha256=code_digest(code_files(root), cdk8s_versions()))
