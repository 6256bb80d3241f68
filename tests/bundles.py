"""Test factories: a valid bundle folder with its manifest.json, and a store entry for it."""
from __future__ import annotations

import json
import random
from pathlib import Path

from contracts import BundleManifest, Profile, StoreEntry
from store import describe_files, write_manifest


def make_bundle(
    folder: Path,
    seed: int = 0,
    model_size: int = 4096,
    processor: str = "cpu",
    extra: dict[str, bytes] | None = None,
) -> BundleManifest:
    """Write a small fake bundle (a random binary model.pt, config, tokenizer, vocab) and its manifest.json.

    Different seeds give different model files, hence different digests."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    (folder / "model.pt").write_bytes(rng.randbytes(model_size))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32, "seed": seed}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}))
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n")
    for name, data in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = BundleManifest(
        files=describe_files(folder),
        processor=processor,
        task="feature-extraction",
        source=f"random:bert-tiny@{seed}",
        shape="bert-tiny",
        sequence_length=16,
        batch_size=1,
        inputs={"input_ids": [1, 16], "attention_mask": [1, 16]},
        outputs={"embedding": [1, 32]},
        runtime={"torch": "test"},
    )
    write_manifest(folder, manifest)
    return manifest


def make_entry(model_id: str, digest: str, processor: str = "cpu", latency_ms: float = 10.0) -> StoreEntry:
    return StoreEntry(
        model_id=model_id,
        processor=processor,
        artifact=digest,
        task="feature-extraction",
        source="random:bert-tiny@0",
        sequence_length=16,
        batch_size=1,
        inputs={"input_ids": [1, 16], "attention_mask": [1, 16]},
        outputs={"embedding": [1, 32]},
        profile=Profile(device_memory_mib=0, host_memory_mib=120, latency_ms=latency_ms, latency_p90_ms=latency_ms * 1.2,
                        source="measured", machine="test"),
        created_at="2026-01-01T00:00:00Z",
    )
