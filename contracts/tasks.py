"""The tasks a model can serve and the outputs of each, in the order a traced artifact returns them.

Tracing shapes its task heads to these names (tracing/heads.py) and records their shapes in the bundle's
manifest; the server names the artifact's tensors by them and the v2 protocol answers with them
(ARCHITECTURE.md, "Serving API"): one table, so a traced artifact and the server never disagree on an output.
"""
from __future__ import annotations

from typing import Dict, Tuple

FEATURE_EXTRACTION = "feature-extraction"
SEQUENCE_CLASSIFICATION = "sequence-classification"
QUESTION_ANSWERING = "question-answering"

OUTPUT_NAMES: Dict[str, Tuple[str, ...]] = {
    FEATURE_EXTRACTION: ("embedding",),
    SEQUENCE_CLASSIFICATION: ("logits",),
    QUESTION_ANSWERING: ("start_logits", "end_logits"),
}
