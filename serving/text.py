"""Texts to model inputs with the bundle's own tokenizer.json (the `tokenizers` library; no transformers in a pod).

Every encoding is truncated to the artifact's traced sequence length and padded to it, as the artifact was
traced and profiled. Pairs (seq_0 + seq_1, question + context) encode as pairs; for question answering only
the context is truncated, so the question stays whole.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tokenizers import Encoding, Tokenizer

from serving.errors import InvalidInput

SPECIAL_FILES = ("special_tokens_map.json", "tokenizer_config.json")


class TextEncoder:
    """Encodes texts (or text pairs) to int64 input_ids and attention_mask of shape [n, sequence_length].

    Configured once at construction; encoding only reads that configuration, so threads may encode at once."""

    def __init__(self, bundle_dir: Path, sequence_length: int, question_answering: bool = False) -> None:
        path = Path(bundle_dir) / "tokenizer.json"
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise ValueError(f"cannot read the tokenizer {path}: {exc}") from None
        self.sequence_length = sequence_length
        self.pad_token = _special_token(Path(bundle_dir), "pad_token") or "[PAD]"
        pad_id = self.tokenizer.token_to_id(self.pad_token)
        self.pad_id = 0 if pad_id is None else int(pad_id)
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.question_answering = question_answering
        self.tokenizer.enable_padding(length=sequence_length, pad_id=self.pad_id, pad_token=self.pad_token)
        self.tokenizer.enable_truncation(max_length=sequence_length, strategy="only_second" if question_answering else "longest_first")

    def encode(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray, List[Encoding]]:
        """(input_ids, attention_mask, encodings); `pairs`, when given, has one second text per text."""
        if pairs is None:
            encodings = self.tokenizer.encode_batch(list(texts))
        else:
            try:
                encodings = self.tokenizer.encode_batch(list(zip(texts, pairs)))
            except Exception as exc:  # only_second cannot make room when the question alone is too long
                field = "inputs" if self.question_answering else "seq_0"
                raise InvalidInput(field, f"the first text of a pair leaves no room for the second within the model's "
                                          f"{self.sequence_length} tokens ({exc}): shorten it") from None
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), self.sequence_length)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(encodings), self.sequence_length)
        return ids, mask, encodings


def _special_token(bundle_dir: Path, name: str) -> Optional[str]:
    for file in SPECIAL_FILES:
        try:
            value = json.loads((bundle_dir / file).read_text(encoding="utf-8")).get(name)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, dict):  # {"content": "[PAD]", ...}
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None
