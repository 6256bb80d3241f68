"""The serving benchmark's cache key for peer artifacts: whatever shapes a cached archive is in its key, so a
changed handler (or model, setting or version) is never served from a stale archive."""
from bench.serving import peer_key

BASE = dict(model_digest="ab" * 32, handler_source="def handle(data, context):\n    return data\n",
            settings={"name": "ts-w2-b8-d5", "bundle": {"sequence_length": 128}}, versions={"torchserve": "0.12.0", "torch": "2.13.0"})


def key(**changes):
    return peer_key(**{**BASE, **changes})


def test_same_inputs_same_key():
    assert key() == key()
    assert len(key()) == 64


def test_key_changes_when_the_handler_changes():
    edited = BASE["handler_source"].replace("return data", "return [d for d in data]")
    assert key(handler_source=edited) != key()


def test_key_changes_with_model_settings_and_versions():
    assert key(model_digest="cd" * 32) != key()
    assert key(settings={**BASE["settings"], "bundle": {"sequence_length": 64}}) != key()
    assert key(versions={**BASE["versions"], "torch": "2.12.0"}) != key()


def test_key_ignores_dict_order():
    assert key(settings=dict(reversed(list(BASE["settings"].items())))) == key()


def test_profile_samples_go_to_the_innermost_matching_frame():
    from bench.serving import attribute_samples

    lines = [
        "thread (1): MainThread;run (asyncio/base_events.py:1);app (starlette/routing.py:2);render (starlette/responses.py:3);"
        "dumps (json/__init__.py:4) 7",
        "thread (1): MainThread;run (asyncio/base_events.py:1);predict (serving/dataplane.py:9);encode (serving/text.py:52) 3",
        "thread (2): inference_0;_worker (concurrent/futures/thread.py:83);_run (serving/model.py:106);"
        "_call_impl (torch/nn/modules/module.py:1) 5",
        "thread (1): MainThread;select (selectors.py:468) 2",
        "thread (1): MainThread;run (uvicorn/server.py:1);predictions (serving/endpoints.py:50);"
        "predictions (serving/v1.py:104) 4",
        "thread (1): MainThread;data_received (uvicorn/protocols/http/httptools_impl.py:1) 6",
        "garbage",
    ]
    got = attribute_samples(lines)
    assert got == {"encode the reply (JSON)": 7, "tokenise": 3, "forward (inference thread, Python side)": 5,
                   "event loop (uvloop, or asyncio without it)": 2,
                   "routing and middleware (starlette, fastapi, serving/app.py, serving/endpoints.py)": 4,
                   "HTTP (uvicorn: httptools, or h11 without it)": 6}
