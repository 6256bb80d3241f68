"""Traceable wrappers: tensors in (`input_ids`, `attention_mask`), tensors out, as the serving API
names them (ARCHITECTURE.md, "Serving API"). transformers models return dicts by default, which
tracing cannot save; these call them with return_dict=False and shape the task's outputs."""
from __future__ import annotations

import torch

from contracts.tasks import FEATURE_EXTRACTION, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION


def segment_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, sep_id: int) -> torch.Tensor:
    """token_type_ids from the ids alone: 0 up to and including the first [SEP], 1 after it, so a
    (question, context) pair keeps its segments although the API sends only ids and a mask."""
    sep = (input_ids == sep_id).to(torch.int64)
    after_first_sep = (torch.cumsum(sep, dim=1) - sep).clamp(max=1)
    return after_first_sep * attention_mask


class TaskHead(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, task: str, sep_id: int, uses_segments: bool):
        super().__init__()
        self.model = model
        self.task = task
        self.sep_id = sep_id
        self.uses_segments = uses_segments

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "return_dict": False}
        if self.uses_segments:
            kwargs["token_type_ids"] = segment_ids(input_ids, attention_mask, self.sep_id)
        out = self.model(**kwargs)
        # One tensor per output of contracts/tasks.py's OUTPUT_NAMES, in its order.
        if self.task == FEATURE_EXTRACTION:
            # The attention-mask mean of the last hidden state, in fp32 whatever ran inside.
            hidden = out[0].float()
            weight = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1e-9)
        if self.task == SEQUENCE_CLASSIFICATION:
            return out[0].float()
        return out[0].float(), out[1].float()


def task_head(loaded) -> TaskHead:
    """The eager wrapper to trace for a LoadedModel."""
    uses_segments = getattr(loaded.config, "model_type", "bert") != "distilbert"
    sep_id = int(loaded.tokenizer.sep_token_id)
    task = task_of(loaded.model)
    return TaskHead(loaded.model, task, sep_id, uses_segments).eval()


def task_of(model: torch.nn.Module) -> str:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return SEQUENCE_CLASSIFICATION
    if name.endswith("ForQuestionAnswering"):
        return QUESTION_ANSWERING
    return FEATURE_EXTRACTION
