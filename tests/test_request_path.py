"""The inference request path's seams, without a server: which requests the middleware answers itself and which
it leaves to FastAPI, the JSON codec with and without orjson, and the event loop / HTTP parser fallback."""
from __future__ import annotations

import importlib
import logging
import math

import pytest

from serving import endpoints, json_codec, server


class _Plane:  # direct_endpoint only closes over the plane; routing needs nothing from it
    pass


@pytest.mark.parametrize(("method", "path", "direct"), [
    ("POST", "/predictions/minilm", True),
    ("GET", "/predictions/minilm", True),
    ("POST", "/v2/models/minilm/infer", True),
    ("POST", "/v2/models/minilm/versions/1/infer", True),
    # FastAPI answers these as it always did: 405, a redirect or 404, and the v2 metadata routes
    ("PUT", "/predictions/minilm", False),
    ("POST", "/predictions/minilm/", False),
    ("POST", "/predictions/", False),
    ("GET", "/v2/models/minilm/infer", False),
    ("GET", "/v2/models/minilm", False),
    ("POST", "/v2/models/minilm/versions/1/infer/extra", False),
    ("GET", "/healthz", False),
])
def test_only_the_protocols_inference_routes_skip_fastapi(method, path, direct):
    found = endpoints.inference_path(path)
    handler = endpoints.direct_endpoint(_Plane(), method, found) if found is not None else None
    assert (handler is not None) == direct


@pytest.mark.parametrize(("path", "want"), [
    ("/predictions/minilm", ("v1", "minilm", None, False)),
    ("/predictions/minilm/", ("v1", "minilm", None, True)),
    ("/v2/models/minilm/infer", ("v2", "minilm", None, False)),
    ("/v2/models/minilm/versions/1/infer/", ("v2", "minilm", "1", True)),
    ("/v2/models/minilm", None),
    ("/healthz", None),
])
def test_the_middleware_reads_protocol_model_and_version_from_the_path(path, want):
    found = endpoints.inference_path(path)
    got = None if found is None else (found.protocol, found.model_id, found.version, found.trailing_slash)
    assert got == want


@pytest.fixture(params=["orjson", "json"])
def codec(request, monkeypatch):
    """json_codec as loaded with and without orjson installed."""
    if request.param == "json":
        import builtins

        real_import = builtins.__import__

        def no_orjson(name, *args, **kwargs):
            if name == "orjson":
                raise ImportError("no orjson here")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_orjson)
    module = importlib.reload(json_codec)
    yield module
    monkeypatch.undo()
    importlib.reload(json_codec)


def test_both_codecs_write_the_same_compact_utf8_json(codec):
    value = {"embeddings": [[0.25, -1.5e-07, 3.0]], "text": "café ☕", "n": 3, "ok": True, "none": None}
    encoded = codec.dumps(value)
    assert isinstance(encoded, bytes)
    assert b" " not in encoded.replace("café ☕".encode(), b"")  # compact: no separators' spaces
    assert "café ☕".encode() in encoded  # UTF-8, not \\u escapes
    assert codec.loads(encoded) == value
    assert codec.describe().startswith("orjson") == (codec.orjson is not None)


@pytest.mark.parametrize("bad", [b"{not json", b"\xff\xfe{}", "{}".encode("utf-16"), b""])
def test_both_codecs_refuse_bad_bodies_with_a_value_error(codec, bad):
    with pytest.raises(ValueError):
        codec.loads(bad)


def test_no_codec_writes_nan_as_non_json(codec):
    if codec.orjson is None:
        with pytest.raises(ValueError):
            codec.dumps({"x": math.nan})
    else:
        assert codec.loads(codec.dumps({"x": math.nan})) == {"x": None}


def test_without_uvloop_or_httptools_the_server_falls_back_and_says_so(monkeypatch, caplog):
    assert server.loop_and_http() == ("uvloop", "httptools")  # both pinned in requirements.txt
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real_find_spec(name, *a))
    with caplog.at_level(logging.WARNING, logger=server.log.name):
        assert server.loop_and_http() == ("asyncio", "httptools")
    assert "uvloop not installed" in caplog.text and "pip install uvloop" in caplog.text
