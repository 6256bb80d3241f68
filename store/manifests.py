"""Hashing bundle files and reading/writing a bundle's manifest.json."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from contracts import ArtifactFile, BundleManifest, ContractError, parse_json, write_atomic
from store.errors import IntegrityError

MANIFEST = "manifest.json"
BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(bundle_dir: Path) -> list[str]:
    """Every file under `bundle_dir` as a '/'-separated relative name, manifest.json excluded, sorted."""
    names = []
    for dirpath, _dirnames, filenames in os.walk(bundle_dir):
        rel = Path(dirpath).relative_to(bundle_dir).as_posix()
        for name in filenames:
            key = name if rel == "." else f"{rel}/{name}"
            if key != MANIFEST:
                names.append(key)
    return sorted(names)


def describe_files(bundle_dir: Path) -> dict[str, ArtifactFile]:
    """`files` for a BundleManifest: the sha256 and size of every file in `bundle_dir` but manifest.json."""
    return {
        name: ArtifactFile(sha256=file_sha256(bundle_dir / name), size=(bundle_dir / name).stat().st_size)
        for name in bundle_files(bundle_dir)
    }


def manifest_bytes(manifest: BundleManifest) -> bytes:
    """The canonical serialisation (sorted keys): equal manifests give identical bytes, so a re-publish is a no-op."""
    data = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_manifest(bundle_dir: Path, manifest: BundleManifest) -> Path:
    """Write `bundle_dir/manifest.json` atomically, in the canonical form."""
    return write_atomic(Path(bundle_dir) / MANIFEST, manifest_bytes(manifest))


def parse_manifest(data: bytes, label: str) -> BundleManifest:
    """A BundleManifest from bytes; ContractError naming `label` when it is not one."""
    manifest = parse_json(BundleManifest, data, label)
    for name in manifest.files:
        if name == MANIFEST or not _safe_name(name):
            raise ContractError(
                f"{label}: files: {name!r} is not a bundle file name (a relative '/'-separated path, "
                "no '.', '..' or hidden segments, not manifest.json)"
            )
    return manifest


def _safe_name(name: str) -> bool:
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") and not p.startswith(".") for p in name.split("/"))


def verify_file(path: Path, name: str, expected: ArtifactFile, where: str, fix: str) -> None:
    """IntegrityError naming the file, the expected and the actual digest when `path` does not match."""
    if not path.is_file():
        raise IntegrityError(f"{name} of {where} is missing (expected sha256 {expected.sha256}, {expected.size} bytes): {fix}")
    size = path.stat().st_size
    actual = file_sha256(path)
    if size != expected.size or actual != expected.sha256:
        raise IntegrityError(
            f"{name} of {where} does not match its manifest: expected sha256 {expected.sha256} "
            f"({expected.size} bytes), got sha256 {actual} ({size} bytes): {fix}"
        )
