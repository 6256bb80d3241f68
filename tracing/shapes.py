"""Named model shapes for `random:<shape>@<seed>` sources: the configuration of a real checkpoint,
with weights drawn from its initialiser instead of downloaded (no model hub is reachable here).

The sizes are the published configs of the Hugging Face checkpoints of the same names."""
from __future__ import annotations

from typing import Any, Dict

# Vocabulary sizes of the two WordPiece vocabularies involved.
UNCASED_VOCAB = 30522  # bert-base-uncased, which MiniLM and the small BERTs use
CASED_VOCAB = 28996  # bert-base-cased

_BERT: Dict[str, Any] = {"model_type": "bert", "max_position_embeddings": 512, "type_vocab_size": 2}

SHAPES: Dict[str, Dict[str, Any]] = {
    "bert-base-cased": dict(_BERT, vocab_size=CASED_VOCAB, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072),
    "bert-large-cased": dict(_BERT, vocab_size=CASED_VOCAB, hidden_size=1024, num_hidden_layers=24,
                             num_attention_heads=16, intermediate_size=4096),
    "all-minilm-l6-v2": dict(_BERT, vocab_size=UNCASED_VOCAB, hidden_size=384, num_hidden_layers=6,
                             num_attention_heads=12, intermediate_size=1536),
    # google/bert_uncased_L-2_H-128_A-2 and L-4_H-256_A-4 (Turc et al., 2019).
    "bert-tiny": dict(_BERT, vocab_size=UNCASED_VOCAB, hidden_size=128, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=512),
    "bert-mini": dict(_BERT, vocab_size=UNCASED_VOCAB, hidden_size=256, num_hidden_layers=4,
                      num_attention_heads=4, intermediate_size=1024),
    "distilbert-base-uncased": {"model_type": "distilbert", "vocab_size": UNCASED_VOCAB, "dim": 768,
                                "n_layers": 6, "n_heads": 12, "hidden_dim": 3072, "max_position_embeddings": 512},
}


def is_cased(shape: str) -> bool:
    return SHAPES[shape]["vocab_size"] == CASED_VOCAB


def known_shapes() -> str:
    return ", ".join(sorted(SHAPES))
