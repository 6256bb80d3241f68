"""AOTInductor artifacts (`tracing trace --format aoti`): refused where Neuron compiles, the manifest's format
field, torch.export's dynamic batch from 1, and a random bert-tiny traced in both formats into one store and served
by one real server, which must answer the same embeddings for both; a damaged .pt2 is refused like any model file.

Compiling the package is the slow part: bert-tiny took 45 s of CPU (50 s of wall time on a quiet machine, 2.5 min
while others ran tests) from a cold inductor cache; a rerun reuses that cache (/tmp/torchinductor_<user>) and takes
~10 s. The module's fixture compiles once; the tests that need it are marked slow, with a longer timeout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from contracts import ContractError
from store import IntegrityError, fetch_bundle, manifest_bytes, open_store, read_entry
from store.manifests import parse_manifest
from tests import serving_fixtures
from tests.bundles import make_bundle
from tests.serving_fixtures import ROOT, Reply, start_server
from tracing import cli
from tracing.pipeline import plan_jobs, up_to_date

SEQUENCE_LENGTH = 64
MAX_BATCH = 8
SOURCE = "random:bert-tiny@4"
FAST = ["--reps", "3", "--warmup", "1", "--batches", "1,2", "--quiet"]
# Lengths that trim to different served lengths (8, 16, 24, ...) and a batch of them.
TEXTS = ["A cat.", "Stock markets fell sharply on Tuesday after the central bank raised interest rates again.",
         "Inferentia chips serve many small models at once, and so do CPUs."]
COMPILE_TIMEOUT_S = 900  # the fixture's compile, on a loaded 2-core machine, within pytest's 300 s default


def write_models(path: Path) -> Path:
    models = [{"id": model_id, "source": SOURCE, "task": "feature-extraction", "sequence_length": SEQUENCE_LENGTH,
               "batch_size": 1, "rps": 1.0} for model_id in ("tiny-ts", "tiny-aoti")]
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    return path


def store_files(root: Path) -> list:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def embeddings(reply: Reply) -> np.ndarray:
    assert reply.status == 200, reply.body
    return np.array(reply.json()["embeddings"], dtype=np.float32)


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    """One store holding the same bert-tiny twice: tiny-ts as TorchScript, tiny-aoti as an AOTInductor package
    (batches 1..MAX_BATCH), each traced, profiled and published by the CLI."""
    base = tmp_path_factory.mktemp("aoti-store")
    root = base / "store"
    models = write_models(base / "models.yaml")
    common = ["trace", "--models", str(models), "--processor", "cpu", "--store", root.as_uri(), *FAST]
    assert cli.main([*common, "--only", "tiny-ts"]) == 0
    assert cli.main([*common, "--only", "tiny-aoti", "--format", "aoti", "--max-batch", str(MAX_BATCH)]) == 0
    return root, models


@pytest.fixture(scope="module")
def both_server(both_formats, tmp_path_factory):
    root, _ = both_formats
    server = start_server(tmp_path_factory.mktemp("aoti-server"), root.as_uri(), ["tiny-ts", "tiny-aoti"],
                          WORKERS=2, MAX_BATCH_SIZE=4, MAX_DELAY_MS=2)
    try:
        reply = server.wait_settled()
        assert reply.status == 200 and reply.json()["status"] == "ready", reply.body
        yield server
    finally:
        server.terminate()
        server.stop()


# ---- refused where it cannot run, and the manifest field ----
@pytest.mark.parametrize("processor", ["inf1", "inf2"])
def test_aoti_is_refused_for_neuron_with_what_to_use(tmp_path, capsys, processor):
    from tracing.trace import TraceOptions, trace_module

    root = tmp_path / "store"
    code = cli.main(["trace", "--models", str(write_models(tmp_path / "models.yaml")), "--processor", processor,
                     "--store", root.as_uri(), "--format", "aoti", "--quiet"])
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == cli.EXIT_BAD_INPUT
    # Refused for what it is (Neuron compiles to TorchScript), not for the missing Neuron SDK of this machine.
    assert f"--format aoti is not available for {processor}" in err and "--format torchscript" in err, err
    assert "torch-neuron" in err and "needs" not in err, err
    assert store_files(root) == []
    with pytest.raises(ValueError, match=f"not available for {processor}"):
        trace_module(torch.nn.Identity(), (), TraceOptions(processor, format="aoti"))


def test_max_batch_below_the_profiled_batches_is_refused(tmp_path, capsys):
    code = cli.main(["trace", "--models", str(write_models(tmp_path / "models.yaml")), "--processor", "cpu",
                     "--store", (tmp_path / "store").as_uri(), "--format", "aoti", "--max-batch", "4",
                     "--batches", "1,8", "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == cli.EXIT_BAD_INPUT and "--max-batch 4 is below the largest batch to profile (8" in err, err


def test_manifest_format_round_trips_and_old_manifests_are_torchscript(tmp_path):
    manifest = make_bundle(tmp_path / "ts")
    old = json.loads(manifest_bytes(manifest))
    old.pop("format")  # a manifest written before the field existed
    assert parse_manifest(json.dumps(old).encode(), "old").format == "torchscript"

    aoti = manifest.model_copy(update={"format": "aoti"})
    again = parse_manifest(manifest_bytes(aoti), "new")
    assert again.format == "aoti" and json.loads(manifest_bytes(again))["format"] == "aoti"
    with pytest.raises(ContractError, match="format"):
        parse_manifest(json.dumps({**old, "format": "onnx"}).encode(), "bad")
    with pytest.raises(ContractError, match="format aoti is for cpu and gpu"):
        parse_manifest(json.dumps({**old, "format": "aoti", "processor": "inf1"}).encode(), "neuron")


# ---- torch.export's batch-1 trap, without compiling ----
@pytest.fixture(scope="module")
def tiny_head():
    from tracing.heads import task_head
    from tracing.profile import CHECK_TEXTS, encode
    from tracing.sources import load_source, parse_source

    loaded = load_source(parse_source(SOURCE), "feature-extraction")
    return task_head(loaded), encode(loaded.tokenizer, CHECK_TEXTS, 16)


def test_export_keeps_batch_one_in_the_dynamic_range(tiny_head):
    from tracing.aoti import export_program

    head, inputs = tiny_head
    example = (inputs["input_ids"][:1], inputs["attention_mask"][:1])  # a batch-1 example, as models.yaml's batch_size 1
    program = export_program(head, example, autocast=None, max_batch=MAX_BATCH)
    ranges = sorted((int(r.lower), int(r.upper)) for r in program.range_constraints.values())
    assert ranges == sorted([(1, 16), (1, MAX_BATCH)]), ranges  # neither specialised to the example's 1 nor to 16
    run = program.module()
    with torch.no_grad():
        for rows, length in [(1, 16), (1, 5), (3, 9)]:
            ids, mask = inputs["input_ids"][:rows, :length], inputs["attention_mask"][:rows, :length]
            got, want = run(ids, mask), head(ids, mask)
            assert torch.allclose(got, want, atol=1e-5), (rows, length)


def test_export_records_autocast_for_reduced_precision(tiny_head):
    from tracing.aoti import export_program

    head, inputs = tiny_head
    example = (inputs["input_ids"][:2], inputs["attention_mask"][:2])
    graph = str(export_program(head, example, autocast=("cpu", torch.bfloat16), max_batch=MAX_BATCH).graph)
    assert "autocast" in graph and "bfloat16" in graph
    assert "bfloat16" not in str(export_program(head, example, autocast=None, max_batch=MAX_BATCH).graph)


# ---- one store with both formats (compiles once) ----
@pytest.mark.slow
@pytest.mark.timeout(COMPILE_TIMEOUT_S)
def test_aoti_bundle_manifest_profile_and_up_to_date(both_formats, tmp_path):
    root, models = both_formats
    store = open_store(root.as_uri())
    entry = read_entry(store, "tiny-aoti", "cpu")
    ts_entry = read_entry(store, "tiny-ts", "cpu")
    assert entry.artifact != ts_entry.artifact
    bundle = fetch_bundle(store, entry.artifact, tmp_path / "cache")
    manifest = parse_manifest((bundle / "manifest.json").read_bytes(), "aoti manifest")
    assert manifest.format == "aoti" and manifest.model_file == "model.pt2" and "model.pt" not in manifest.files
    assert manifest.compiler_args[:2] == [f"batch=1..{MAX_BATCH}", f"sequence=1..{SEQUENCE_LENGTH}"]
    assert manifest.runtime["cpu_isa"] == str(torch._inductor.cpu_vec_isa.pick_vec_isa()), manifest.runtime  # traced here
    assert parse_manifest((root / "artifacts" / ts_entry.artifact / "manifest.json").read_bytes(), "ts").format == "torchscript"
    # Profiled through the loaded package like any artifact: measured, batches 1 and 2, checked against eager.
    p = entry.profile
    assert p.source == "measured" and set(p.by_batch) == {"1", "2"} and p.latency_ms > 0 and p.host_memory_mib > 0
    assert entry.check.passed and entry.check.metric == "cosine" and entry.check.value > 0.9999

    from serving.model import aoti_max_batch

    assert aoti_max_batch(manifest.compiler_args) == MAX_BATCH
    # An entry traced in one format is not up to date for the other: asking for it traces it again.
    from contracts import ModelCatalogue, load

    catalogue = load(ModelCatalogue, models).models
    ts_job = plan_jobs([m for m in catalogue if m.id == "tiny-ts"], "cpu")[0]
    aoti_job = plan_jobs([m for m in catalogue if m.id == "tiny-aoti"], "cpu")[0]
    assert up_to_date(ts_job, "cpu", store, "torchscript") and not up_to_date(ts_job, "cpu", store, "aoti")
    assert up_to_date(aoti_job, "cpu", store, "aoti") and not up_to_date(aoti_job, "cpu", store, "torchscript")


@pytest.mark.slow
@pytest.mark.timeout(COMPILE_TIMEOUT_S)
def test_both_formats_serve_the_same_embeddings(both_server):
    for texts in (TEXTS[:1], TEXTS[1:2], TEXTS):  # batch 1 (short and long), then a batch of mixed lengths
        ts = embeddings(both_server.post("/predictions/tiny-ts", {"inputs": texts}))
        aoti = embeddings(both_server.post("/predictions/tiny-aoti", {"inputs": texts}))
        assert ts.shape == aoti.shape == (len(texts), 128)
        assert cosine(ts, aoti).min() > 0.9999, cosine(ts, aoti)
        assert np.abs(ts - aoti).max() < 1e-3
    other = embeddings(both_server.post("/predictions/tiny-aoti", {"inputs": TEXTS[:2]}))
    assert cosine(other[:1], other[1:2])[0] < 0.9999  # distinct texts: the comparison above can fail


@pytest.mark.slow
@pytest.mark.timeout(COMPILE_TIMEOUT_S)
def test_aoti_bundle_with_a_wrong_sha256_is_refused(both_formats, tmp_path):
    root, _ = both_formats
    store = serving_fixtures.ServingStore(root, {}).copy(tmp_path / "damaged")
    digest = read_entry(open_store(store.uri), "tiny-aoti", "cpu").artifact
    package = store.root / "artifacts" / digest / "model.pt2"
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different sha256
    package.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.pt2 of artifact .* does not match its manifest"):
        fetch_bundle(open_store(store.uri), digest, tmp_path / "cache")

    server = start_server(tmp_path / "server", store.uri, ["tiny-aoti", "tiny-ts"], WORKERS=1)
    try:
        body = server.wait_settled().json()
        assert body["status"] == "degraded" and body["ready_models"] == ["tiny-ts"], body
        assert "sha256" in body["failed"]["tiny-aoti"] and "model.pt2" in body["failed"]["tiny-aoti"], body
        reply = server.post("/predictions/tiny-aoti", {"inputs": "hello"})
        assert reply.status == 503 and "sha256" in reply.error, reply.body
    finally:
        server.terminate()
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(COMPILE_TIMEOUT_S)
def test_max_batch_size_above_the_package_range_is_refused(both_formats, tmp_path):
    from serving.model import load_artifact

    root, _ = both_formats
    store = open_store(root.as_uri())
    entry = read_entry(store, "tiny-aoti", "cpu")
    folder = fetch_bundle(store, entry.artifact, tmp_path / "cache")
    with pytest.raises(ValueError, match=f"MAX_BATCH_SIZE is 16 but .* batches of up to {MAX_BATCH}.*--max-batch 16"):
        load_artifact(folder, entry.artifact, entry, "cpu", 16)
    assert load_artifact(folder, entry.artifact, entry, "cpu", MAX_BATCH).forward is not None


LOAD_WITHOUT_COMPILER = """
import json, shutil, sys
from pathlib import Path
import numpy as np
from serving.model import load_module
found = [c for c in ("g++", "gcc", "c++", "cc", "clang") if shutil.which(c)]
assert not found, found
module = load_module(Path(sys.argv[1]), "aoti", "cpu")
ids = np.array(json.loads(sys.argv[2]), dtype=np.int64)
import torch
print(json.dumps(module(torch.from_numpy(ids), torch.ones_like(torch.from_numpy(ids))).tolist()))
"""


@pytest.mark.slow
@pytest.mark.timeout(COMPILE_TIMEOUT_S)
def test_a_package_loads_and_runs_without_a_compiler(both_formats, tmp_path):
    """The serving images have no compiler: loading a .pt2 needs only torch (the package holds the built library)."""
    root, _ = both_formats
    store = open_store(root.as_uri())
    folders = {i: fetch_bundle(store, read_entry(store, i, "cpu").artifact, tmp_path / "cache") for i in ("tiny-aoti", "tiny-ts")}
    ids = [[101, 1037, 4937, 102], [101, 2598, 6089, 102]]
    empty = tmp_path / "no-tools"
    empty.mkdir()
    fresh_tmp = tmp_path / "tmp"  # no inductor cache from earlier compiles: as in a fresh serving container
    fresh_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "TORCHINDUCTOR_CACHE_DIR")}
    env.update({"PATH": str(empty), "PYTHONPATH": str(ROOT), "TMPDIR": str(fresh_tmp)})
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_COMPILER, str(folders["tiny-aoti"] / "model.pt2"), json.dumps(ids)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "outdated" not in proc.stderr and "compiler" not in proc.stderr.lower(), proc.stderr[-2000:]
    got = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    from serving.model import load_module

    ts = load_module(folders["tiny-ts"] / "model.pt", "torchscript", "cpu")
    with torch.no_grad():
        want = ts(torch.tensor(ids), torch.ones(2, 4, dtype=torch.int64)).numpy()
    assert got.shape == want.shape == (2, 128) and cosine(got, want).min() > 0.9999
