"""KServe ModelServer peer for the serving benchmark: a minimal `kserve.Model` on the same TorchScript bundle as
modelfleet's server (model.pt with its pooling head inside, tokenizer.json), tokenised with `tokenizers`, padded
and truncated to the traced length and then cut to the batch's longest row (rounded up to 8) as modelfleet's server
does, one intra-op thread per process. KServe's Python ModelServer has no request batching of its own (KServe
batches in its agent sidecar, outside the model server), so each request runs alone; parallelism is its uvicorn
worker processes (--workers).

Runs in its own virtual environment (.venv-kserve), so it imports only kserve, torch, tokenizers and the standard
library. Protocol: KServe v1, POST /v1/models/<name>:predict with {"instances": ["a text", ...]}; answer
{"predictions": [[...384 floats...], ...]}.

    python bench/serving_kserve_model.py --model_name minilm --model_dir BUNDLE --sequence_length 128 \\
        --http_port PORT --workers 2
"""
import argparse
import json
import os
import threading

import kserve
import torch
from kserve import model_server
from tokenizers import Tokenizer

TRIM = 8  # serving/model.TRIM_MULTIPLE (restated: this file runs in KServe's own environment)


class EmbeddingModel(kserve.Model):
    def __init__(self, name: str, model_dir: str, sequence_length: int, pad_token: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.seq = sequence_length
        self.pad_token = pad_token
        self.module = None
        self.tokenizer = None

    # With --workers > 1 KServe spawns its worker processes and pickles the registered models into them: the
    # TorchScript module does not pickle, so each worker loads its own copy, in a thread, because KServe kills a
    # worker that does not answer its liveness ping within 5 s of starting, and unpickling happens before that.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["module"] = state["tokenizer"] = None
        state.pop("_loaded", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._loaded = threading.Event()
        threading.Thread(target=self.load, daemon=True).start()

    def load(self) -> bool:
        torch.set_num_threads(1)  # one intra-op thread per process, as modelfleet's inference threads
        self.module = torch.jit.load(os.path.join(self.model_dir, "model.pt"), map_location="cpu").eval()
        tok = Tokenizer.from_file(os.path.join(self.model_dir, "tokenizer.json"))
        pad_id = tok.token_to_id(self.pad_token)
        tok.enable_padding(length=self.seq, pad_id=0 if pad_id is None else pad_id, pad_token=self.pad_token)
        tok.enable_truncation(max_length=self.seq)
        self.tokenizer = tok
        with torch.no_grad():  # warm up as modelfleet's server does (batch 1 twice, then batch 8 twice)
            for n in (1, 1, 8, 8):
                ids = torch.zeros((n, self.seq), dtype=torch.int64)
                self.module(ids, torch.ones_like(ids))
        self.ready = True
        if getattr(self, "_loaded", None) is not None:
            self._loaded.set()
        return self.ready

    def predict(self, payload, headers=None, response_headers=None):
        # sync on purpose: KServe runs a sync predict on its event loop, one request at a time per worker process,
        # which is what one intra-op thread per process gives anyway
        if self.module is None:  # a spawned worker still loading
            self._loaded.wait()
        if isinstance(payload, (bytes, bytearray)):  # KServe hands over the raw body when no JSON Content-Type came
            payload = json.loads(payload)
        texts = payload["instances"]
        texts = [texts] if isinstance(texts, str) else list(texts)
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
        # serving/model.served_length's rule, restated
        longest = int(mask.sum(dim=1).max())
        length = min(self.seq, max(TRIM, -(-longest // TRIM) * TRIM))
        with torch.no_grad():
            out = self.module(ids[:, :length].contiguous(), mask[:, :length].contiguous())
        out = out[0] if isinstance(out, (tuple, list)) else out
        return {"predictions": out.float().numpy().tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True, help="the bundle folder (model.pt, tokenizer.json)")
    parser.add_argument("--sequence_length", type=int, required=True, help="the length the artifact was traced at")
    parser.add_argument("--pad_token", default="[PAD]")
    args, _ = parser.parse_known_args()
    model = EmbeddingModel(args.model_name, args.model_dir, args.sequence_length, args.pad_token)
    if args.workers > 1:
        model.ready = True  # the workers load it (see __setstate__); the parent only registers it
        # KServe's parent pings each spawned worker every 0.5 s and replaces one that has not answered within 5 s;
        # on a busy 2-core machine a worker is still importing torch by then, and is replaced for ever. The ping's
        # wait is the only thing changed: requests never pass through the parent.
        from kserve.protocol.rest.multiprocess.server import RESTServerProcess
        RESTServerProcess.is_alive.__defaults__ = (120.0,)
    else:
        model.load()
    kserve.ModelServer(http_port=args.http_port, workers=args.workers, enable_grpc=False,
                       enable_latency_logging=False).start([model])


if __name__ == "__main__":
    main()
