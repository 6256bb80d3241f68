"""Write a traced bundle: the model file, tokenizer, config and manifest.json (with every file's
sha256 and size), so a server needs nothing but the bundle. The model file is model.pt (TorchScript) or
model.pt2 (an AOTInductor package), as the manifest's `format` says. transformers 5 writes tokenizer.json;
vocab.txt and special_tokens_map.json are added so the 4.x of the Neuron images reads it too."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from contracts import BundleManifest
from store import describe_files, write_manifest
from tracing.vocab import write_vocab_txt

MODEL_FILE = "model.pt"
MODEL_FILES = {"torchscript": MODEL_FILE, "aoti": "model.pt2"}


def write_tokenizer(tokenizer: Any, folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))
    write_vocab_txt(tokenizer, folder / "vocab.txt")
    specials = {name: str(getattr(tokenizer, name)) for name in
                ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token") if getattr(tokenizer, name, None)}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")


def write_bundle(folder: Path, module: Any, tokenizer: Any, config: Any, *, processor: str, task: str, source: str,
                 shape: str, sequence_length: int, batch_size: int, precision: str, outputs: Dict[str, List[int]],
                 labels: Optional[List[str]], runtime: Dict[str, str], compiler_args: List[str],
                 model_format: str = "torchscript") -> BundleManifest:
    """Fill `folder` (empty, private to this run) with the bundle; manifest.json is written last. `module` is a
    ScriptModule (torchscript) or the path of a compiled .pt2 package (aoti), which is moved into the bundle."""
    import torch

    from tracing.trace import quiet_tracer

    model_file = MODEL_FILES[model_format]
    if model_format == "aoti":
        place_file(Path(module), folder / model_file)
    else:
        with quiet_tracer():
            torch.jit.save(module, str(folder / model_file))
    write_tokenizer(tokenizer, folder)
    config.to_json_file(str(folder / "config.json"))
    manifest = BundleManifest(
        model_file=model_file, format=model_format, files=describe_files(folder), processor=processor, task=task,
        source=source, shape=shape, sequence_length=sequence_length, batch_size=batch_size, precision=precision,
        inputs={"input_ids": [batch_size, sequence_length], "attention_mask": [batch_size, sequence_length]},
        outputs=outputs, labels=labels, runtime=runtime, compiler_args=compiler_args,
    )
    write_manifest(folder, manifest)  # canonical bytes: re-publishing the same bundle is a no-op
    return manifest


def place_file(source: Path, target: Path) -> None:
    """Move `source` to `target` atomically: to a hidden name beside the target first (a copy when they are on
    different filesystems), then renamed, so `target` is either absent or complete."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        shutil.move(str(source), str(partial))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
