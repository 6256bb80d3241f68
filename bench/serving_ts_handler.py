"""TorchServe handler for the serving benchmark's peer run: the same TorchScript bundle (model.pt with its pooling
head inside), tokenised with `tokenizers` from the bundle's tokenizer.json, padded and truncated to the traced
length and then cut to the batch's longest row (rounded up to 8) exactly as modelfleet's server does, one intra-op
thread per worker. Input: the /predictions JSON body
{"inputs": "a text"} (or a list); output per request: {"embeddings": [[...]]}. Runs inside TorchServe's worker
(its own virtual environment), so it imports only torch, tokenizers and the standard library.
"""
import json
import os

import torch
from tokenizers import Tokenizer

TRIM = 8  # serving/repository.TRIM_MULTIPLE


class EmbeddingHandler:
    def __init__(self):
        self.model = None
        self.tokenizer = None
        self.initialized = False

    def initialize(self, context):
        torch.set_num_threads(1)
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "bundle.json")) as f:
            meta = json.load(f)
        self.seq = int(meta["sequence_length"])
        self.model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu")
        self.model.eval()
        tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        pad_id, pad_token = int(meta["pad_id"]), meta["pad_token"]
        tok.enable_padding(length=self.seq, pad_id=pad_id, pad_token=pad_token)
        tok.enable_truncation(max_length=self.seq)
        self.tokenizer = tok
        with torch.no_grad():  # warm up as modelfleet's server does (batch 1 twice, then the largest batch)
            for n in (1, 1, 8, 8):
                ids = torch.zeros((n, self.seq), dtype=torch.int64)
                self.model(ids, torch.ones_like(ids))
        self.initialized = True

    def handle(self, data, context):
        texts, counts = [], []
        for row in data:
            body = row.get("body") if isinstance(row, dict) else row
            if body is None and isinstance(row, dict):
                body = row.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body.decode("utf-8"))
            elif isinstance(body, str):
                body = json.loads(body)
            inputs = body["inputs"]
            inputs = [inputs] if isinstance(inputs, str) else list(inputs)
            texts.extend(inputs)
            counts.append(len(inputs))
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
        # serving/repository.served_length's rule, restated: this file runs in TorchServe's own environment.
        longest = int(mask.sum(dim=1).max())
        length = min(self.seq, max(TRIM, -(-longest // TRIM) * TRIM))
        ids, mask = ids[:, :length].contiguous(), mask[:, :length].contiguous()
        with torch.no_grad():
            out = self.model(ids, mask)
        out = out[0] if isinstance(out, (tuple, list)) else out
        rows = out.float().numpy().tolist()
        replies, at = [], 0
        for n in counts:
            replies.append(json.dumps({"embeddings": rows[at:at + n]}))
            at += n
        return replies


_service = EmbeddingHandler()


def handle(data, context):
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
