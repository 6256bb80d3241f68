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
