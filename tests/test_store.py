"""The artifact store over file:// and a real moto S3 server: round trips, integrity, atomicity, errors."""
import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from contracts import ContractError
from store import (
    FileStore,
    IntegrityError,
    NotFoundError,
    S3Store,
    StoreError,
    fetch_bundle,
    list_entries,
    open_store,
    publish_bundle,
    publish_entry,
    read_entries,
    read_entry,
)
from tests.bundles import make_bundle, make_entry
from tests.fixtures_net import free_port
from tests.fixtures_s3 import BUCKET, CREDENTIALS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_real_aws(fake_aws):
    """Every test here runs with fake credentials and none of this machine's AWS configuration."""


@pytest.fixture(params=["file", "s3"])
def store_uri(request, tmp_path) -> str:
    """A fresh, empty store: a folder, or a fresh prefix in the moto bucket."""
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    endpoint = request.getfixturevalue("moto_endpoint")
    return f"s3://{BUCKET}/runs/{uuid.uuid4().hex}?endpoint_url={endpoint}"


def record(monkeypatch, store, *methods: str) -> list:
    """Record calls to the given methods of one store object (they still run)."""
    calls = []
    for name in methods:
        original = getattr(store, name)

        def spy(*args, _name=name, _original=original):
            calls.append((_name, *args))
            return _original(*args)

        monkeypatch.setattr(store, name, spy)
    return calls


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the object API -------------------------------------------------------------------------------------------------

def test_object_api(store_uri, tmp_path):
    store = open_store(store_uri)
    assert store.list_keys("") == []
    assert not store.exists("a/b.txt")
    store.write_bytes("a/b.txt", b"one")
    store.write_bytes("a/b.txt", b"two")
    store.write_bytes("a/c.txt", b"three")
    store.write_bytes("ab/d.txt", b"four")
    assert store.read_bytes("a/b.txt") == b"two"
    assert store.exists("a/b.txt") and not store.exists("a")
    assert store.list_keys("") == ["a/b.txt", "a/c.txt", "ab/d.txt"]
    assert store.list_keys("a/") == ["a/b.txt", "a/c.txt"]
    assert store.list_keys("a") == ["a/b.txt", "a/c.txt", "ab/d.txt"]
    assert store.list_sizes("a/") == {"a/b.txt": 3, "a/c.txt": 5}
    with pytest.raises(NotFoundError) as err:
        store.read_bytes("a/missing.txt")
    assert "a/missing.txt not found" in str(err.value) and store.uri in str(err.value)

    local = tmp_path / "local.bin"
    local.write_bytes(b"x" * 1000)
    store.upload_file(local, "up/local.bin")
    store.download_file("up/local.bin", tmp_path / "down" / "copy.bin")
    assert (tmp_path / "down" / "copy.bin").read_bytes() == b"x" * 1000
    assert [p.name for p in (tmp_path / "down").iterdir()] == ["copy.bin"]  # no temporary file left
    with pytest.raises(NotFoundError):
        store.download_file("up/missing.bin", tmp_path / "down" / "missing.bin")
    assert [p.name for p in (tmp_path / "down").iterdir()] == ["copy.bin"]

    for bad in ("", "/abs", "a/../b", "a//b", ".hidden", "a/.tmp"):
        with pytest.raises(StoreError, match="bad store key"):
            store.write_bytes(bad, b"")


def test_file_store_writes_are_atomic_and_leave_no_temporaries(tmp_path):
    store = open_store(str(tmp_path / "s"))
    assert isinstance(store, FileStore) and store.uri == (tmp_path / "s").as_uri()
    store.write_bytes("k/v.json", b"{}")
    assert sorted(p.name for p in (tmp_path / "s" / "k").iterdir()) == ["v.json"]
    assert (tmp_path / "s" / "k" / "v.json").stat().st_mode & 0o777 == 0o644
    # A temporary file of a write in progress is not listed.
    (tmp_path / "s" / "k" / ".v.json.abc.tmp").write_bytes(b"partial")
    assert store.list_keys("") == ["k/v.json"]


# --- bundles --------------------------------------------------------------------------------------------------------

def test_bundle_round_trip(store_uri, tmp_path):
    store = open_store(store_uri)
    manifest = make_bundle(tmp_path / "bundle", extra={"sub/extra.bin": b"\x00\x01"})
    digest = publish_bundle(store, tmp_path / "bundle")
    assert digest == manifest.digest == manifest.files["model.pt"].sha256
    assert store.list_keys("artifacts/") == sorted(
        f"artifacts/{digest}/{n}" for n in ["config.json", "manifest.json", "model.pt", "sub/extra.bin", "tokenizer.json", "vocab.txt"])

    cache = tmp_path / "cache"
    fetched = fetch_bundle(store, digest, cache)
    assert fetched == cache / digest
    assert tree(fetched) == tree(tmp_path / "bundle")
    assert [p.name for p in cache.iterdir()] == [digest]  # no temporary folder left
    # A sound cached copy is used as it is, without the store.
    assert fetch_bundle(open_store(tmp_path / "elsewhere"), digest, cache) == fetched


def test_publish_is_idempotent(store_uri, tmp_path, monkeypatch):
    store = open_store(store_uri)
    make_bundle(tmp_path / "bundle", seed=3)
    digest = publish_bundle(store, tmp_path / "bundle")
    before = {key: store.read_bytes(key) for key in store.list_keys("")}
    calls = record(monkeypatch, store, "upload_file", "write_bytes")
    assert publish_bundle(store, tmp_path / "bundle") == digest
    assert calls == []
    assert {key: store.read_bytes(key) for key in store.list_keys("")} == before
    # force uploads again, the manifest last.
    assert publish_bundle(store, tmp_path / "bundle", force=True) == digest
    assert len(calls) == 5 and calls[-1][:2] == ("write_bytes", f"artifacts/{digest}/manifest.json")


def test_damaged_object_in_store_fails_fetch_and_leaves_nothing(store_uri, tmp_path):
    store = open_store(store_uri)
    manifest = make_bundle(tmp_path / "bundle", seed=4)
    digest = publish_bundle(store, tmp_path / "bundle")
    original = (tmp_path / "bundle" / "tokenizer.json").read_bytes()
    store.write_bytes(f"artifacts/{digest}/tokenizer.json", original[::-1])  # same size, other bytes

    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError) as err:
        fetch_bundle(store, digest, cache)
    text = str(err.value)
    assert "tokenizer.json" in text and digest in text
    assert manifest.files["tokenizer.json"].sha256 in text  # expected
    assert hashlib.sha256(original[::-1]).hexdigest() in text  # actual
    assert "re-publish it with python -m tracing trace" in text
    assert list(cache.iterdir()) == []

    # An identical manifest is not enough to skip a damaged artifact when its sizes differ;
    # force repairs one whose sizes match.
    publish_bundle(store, tmp_path / "bundle", force=True)
    assert tree(fetch_bundle(store, digest, cache)) == tree(tmp_path / "bundle")


def test_publish_repairs_a_truncated_artifact(store_uri, tmp_path):
    store = open_store(store_uri)
    make_bundle(tmp_path / "bundle", seed=5)
    digest = publish_bundle(store, tmp_path / "bundle")
    store.write_bytes(f"artifacts/{digest}/model.pt", b"truncated")
    with pytest.raises(IntegrityError, match="model.pt"):
        fetch_bundle(store, digest, tmp_path / "cache")
    publish_bundle(store, tmp_path / "bundle")  # sizes differ from the manifest: uploads again
    assert tree(fetch_bundle(store, digest, tmp_path / "cache")) == tree(tmp_path / "bundle")


def test_damaged_cache_is_fetched_again(store_uri, tmp_path):
    store = open_store(store_uri)
    make_bundle(tmp_path / "bundle", seed=6)
    digest = publish_bundle(store, tmp_path / "bundle")
    fetched = fetch_bundle(store, digest, tmp_path / "cache")
    (fetched / "model.pt").write_bytes(b"damaged")
    (fetched / "stray.txt").write_bytes(b"x")
    assert fetch_bundle(store, digest, tmp_path / "cache") == fetched
    assert tree(fetched) == tree(tmp_path / "bundle")


def test_bundle_that_does_not_match_its_manifest_publishes_nothing(store_uri, tmp_path):
    store = open_store(store_uri)
    make_bundle(tmp_path / "changed", seed=7)
    (tmp_path / "changed" / "vocab.txt").write_text("changed after the manifest\n")
    with pytest.raises(IntegrityError) as err:
        publish_bundle(store, tmp_path / "changed")
    assert "vocab.txt" in str(err.value) and "expected sha256" in str(err.value)

    make_bundle(tmp_path / "unlisted", seed=8)
    (tmp_path / "unlisted" / "notes.txt").write_text("not in the manifest")
    with pytest.raises(IntegrityError, match="notes.txt"):
        publish_bundle(store, tmp_path / "unlisted")

    make_bundle(tmp_path / "missing", seed=9)
    (tmp_path / "missing" / "config.json").unlink()
    with pytest.raises(IntegrityError, match="config.json"):
        publish_bundle(store, tmp_path / "missing")

    (tmp_path / "no-manifest").mkdir()
    with pytest.raises(StoreError, match="manifest.json"):
        publish_bundle(store, tmp_path / "no-manifest")
    assert store.list_keys("") == []


def test_missing_or_unfinished_artifact(store_uri, tmp_path):
    store = open_store(store_uri)
    digest = "ab" * 32
    with pytest.raises(StoreError) as err:
        fetch_bundle(store, digest, tmp_path / "cache")
    assert str(err.value) == f"artifact {digest} is not in {store.uri} (or its publish did not finish)"
    # Files without a manifest: a publish that never finished.
    real = make_bundle(tmp_path / "bundle", seed=10).digest
    store.upload_file(tmp_path / "bundle" / "model.pt", f"artifacts/{real}/model.pt")
    with pytest.raises(StoreError, match="or its publish did not finish"):
        fetch_bundle(store, real, tmp_path / "cache")
    with pytest.raises(StoreError, match="must be a sha256 digest"):
        fetch_bundle(store, "../etc", tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_large_file_round_trip(store_uri, tmp_path):
    """9 MiB is above the 8 MiB multipart threshold: on S3 it goes up in parts."""
    store = open_store(store_uri)
    make_bundle(tmp_path / "bundle", seed=11, model_size=9 * 1024 * 1024)
    digest = publish_bundle(store, tmp_path / "bundle")
    assert tree(fetch_bundle(store, digest, tmp_path / "cache")) == tree(tmp_path / "bundle")
    if isinstance(store, S3Store):
        head = store.client.head_object(Bucket=store.bucket, Key=store.object_key(f"artifacts/{digest}/model.pt"))
        assert head["ETag"].strip('"').endswith("-2"), head["ETag"]  # a multipart upload of two parts


# --- entries --------------------------------------------------------------------------------------------------------

def test_entry_round_trip(store_uri, tmp_path):
    store = open_store(store_uri)
    make_bundle(tmp_path / "bundle", seed=12)
    digest = publish_bundle(store, tmp_path / "bundle")
    entry = make_entry("minilm", digest, "cpu")
    publish_entry(store, entry)
    assert read_entry(store, "minilm", "cpu") == entry
    assert read_entry(store, "minilm", "gpu") is None
    assert read_entry(store, "other", "cpu") is None
    assert list_entries(store) == [("minilm", "cpu")]
    stored = json.loads(store.read_bytes("models/minilm/cpu.json"))
    assert stored["schema"] == 1 and stored["artifact"] == digest


def test_entry_before_its_artifact_is_refused(store_uri, tmp_path):
    store = open_store(store_uri)
    with pytest.raises(StoreError) as err:
        publish_entry(store, make_entry("early", "cd" * 32))
    assert "cd" * 32 in str(err.value) and "publish the bundle first" in str(err.value)
    assert store.list_keys("") == []


def test_invalid_entry_names_its_key(store_uri):
    store = open_store(store_uri)
    store.write_bytes("models/broken/cpu.json", b"{not json")
    with pytest.raises(ContractError, match="models/broken/cpu.json"):
        read_entry(store, "broken", "cpu")
    store.write_bytes("models/wrong/cpu.json", json.dumps({"schema": 1, "model_id": "wrong"}).encode())
    with pytest.raises(ContractError) as err:
        read_entry(store, "wrong", "cpu")
    assert "models/wrong/cpu.json" in str(err.value) and "processor: is required" in str(err.value)
    with pytest.raises(ContractError, match="models/broken/cpu.json"):
        read_entries(store, ["broken"])


def test_entry_under_the_wrong_key_is_refused(store_uri, tmp_path):
    store = open_store(store_uri)
    make_bundle(tmp_path / "bundle", seed=13)
    digest = publish_bundle(store, tmp_path / "bundle")
    store.write_bytes("models/b/cpu.json", json.dumps(make_entry("a", digest).to_json_dict()).encode())
    with pytest.raises(ContractError, match="holds the entry of a on cpu, not of b on cpu"):
        read_entry(store, "b", "cpu")


def test_concurrent_publishes_both_survive(store_uri, tmp_path):
    models = ["alpha", "beta", "gamma", "delta"]
    for i, model in enumerate(models):
        make_bundle(tmp_path / model, seed=100 + i)
    barrier = threading.Barrier(len(models))
    errors: list = []

    def publish(model: str) -> None:
        try:
            store = open_store(store_uri)  # one store per thread, as separate runs would have
            barrier.wait(timeout=10)
            digest = publish_bundle(store, tmp_path / model)
            publish_entry(store, make_entry(model, digest))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and not any(t.is_alive() for t in threads)
    store = open_store(store_uri)
    assert list_entries(store) == sorted((m, "cpu") for m in models)
    for model in models:
        entry = read_entry(store, model, "cpu")
        assert entry is not None and tree(fetch_bundle(store, entry.artifact, tmp_path / "cache")) == tree(tmp_path / model)


def test_read_entries_reads_only_the_requested_models(store_uri, tmp_path, monkeypatch):
    store = open_store(store_uri)
    make_bundle(tmp_path / "bundle", seed=14)
    digest = publish_bundle(store, tmp_path / "bundle")
    for model, processor in [("a", "cpu"), ("a", "gpu"), ("b", "cpu"), ("c", "inf1"), ("ab", "cpu")]:
        publish_entry(store, make_entry(model, digest, processor))
    store.write_bytes("models/README.txt", b"not an entry")
    calls = record(monkeypatch, store, "list_keys", "read_bytes")
    got = read_entries(store, ["a", "c", "absent"])
    assert {m: sorted(p) for m, p in got.items()} == {"a": ["cpu", "gpu"], "c": ["inf1"]}
    assert got["a"]["gpu"] == make_entry("a", digest, "gpu")
    assert [c for c in calls if c[0] == "list_keys"] == [("list_keys", "models/")]
    assert sorted(c[1] for c in calls if c[0] == "read_bytes") == ["models/a/cpu.json", "models/a/gpu.json", "models/c/inf1.json"]
    assert read_entries(store, []) == {}
    assert list_entries(store) == [("a", "cpu"), ("a", "gpu"), ("ab", "cpu"), ("b", "cpu"), ("c", "inf1")]


# --- URIs and errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "message"), [
    ("gs://bucket/x", "store URI must be file://DIR, a folder path, or s3://bucket/prefix, got 'gs://bucket/x'"),
    ("", "store URI must be file://DIR, a folder path, or s3://bucket/prefix, got an empty string"),
    ("s3://", "is not a bucket name"),
    ("s3://Bad_Bucket/x", "'Bad_Bucket' is not a bucket name"),
    ("s3://bucket/x?nope=1", "unknown option(s) nope"),
    ("s3://bucket/x?max_attempts=zero", "option max_attempts in store URI 's3://bucket/x?max_attempts=zero' must be 0 or more"),
    ("s3://bucket/x?connect_timeout=0", "option connect_timeout in store URI 's3://bucket/x?connect_timeout=0' must be a positive number"),
    ("s3://bucket/../x", "has an empty, '.', '..' or hidden segment"),
    ("file:///tmp/x?y=1", "a file:// store URI takes no options"),
])
def test_bad_uri(uri, message):
    with pytest.raises(StoreError) as err:
        open_store(uri)
    assert message in str(err.value)


def test_uri_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store("out/store").uri == (tmp_path / "out" / "store").as_uri()
    assert open_store(f"file://{tmp_path}/s").uri == (tmp_path / "s").as_uri()
    assert open_store(tmp_path / "p").uri == (tmp_path / "p").as_uri()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        open_store(tmp_path / "a-file")

    s3 = open_store("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.describe("models/a/cpu.json") == "s3://bucket/some/prefix/models/a/cpu.json"
    config = s3.client.meta.config
    assert config.retries == {"total_max_attempts": 9, "mode": "standard"}  # botocore's max_attempts 8: 8 retries
    assert (config.connect_timeout, config.read_timeout) == (5, 60)
    assert s3.client.meta.region_name == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    tuned = open_store("s3://bucket?endpoint_url=http://127.0.0.1:9&max_attempts=2&connect_timeout=1.5")
    assert tuned.client.meta.endpoint_url == "http://127.0.0.1:9" and tuned.client.meta.region_name == "eu-west-1"
    assert tuned.client.meta.config.retries["total_max_attempts"] == 3 and tuned.client.meta.config.connect_timeout == 1.5
    assert tuned.prefix == "" and tuned.describe("k") == "s3://bucket/k"


def test_unreachable_endpoint_fails_fast_with_a_clear_error(tmp_path):
    closed = free_port()
    store = open_store(f"s3://bucket/x?endpoint_url=http://127.0.0.1:{closed}&max_attempts=0&connect_timeout=1")
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.read_bytes("models/a/cpu.json")
    assert f"cannot reach http://127.0.0.1:{closed}" in str(err.value) and "endpoint_url" in str(err.value)
    with pytest.raises(StoreError, match="cannot reach"):
        fetch_bundle(store, "ab" * 32, tmp_path / "cache")
    with pytest.raises(StoreError, match="cannot reach"):
        read_entries(store, ["a"])
    assert time.monotonic() - start < 5


def test_missing_bucket(moto_endpoint):
    store = open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x?endpoint_url={moto_endpoint}")
    with pytest.raises(StoreError, match="does not exist .*create it or fix the bucket"):
        store.list_keys("models/")
    with pytest.raises(StoreError, match="does not exist"):
        store.write_bytes("a", b"")


def test_s3_store_at_the_bucket_root(moto_endpoint, tmp_path):
    bucket = f"root-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, **CREDENTIALS).create_bucket(Bucket=bucket)
    store = open_store(f"s3://{bucket}?endpoint_url={moto_endpoint}")
    make_bundle(tmp_path / "bundle", seed=15)
    digest = publish_bundle(store, tmp_path / "bundle")
    publish_entry(store, make_entry("root", digest))
    assert list_entries(store) == [("root", "cpu")]
    assert f"artifacts/{digest}/manifest.json" in store.list_keys("")


def test_endpoint_from_the_environment(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    store = open_store(f"s3://{BUCKET}/env-{uuid.uuid4().hex}")
    store.write_bytes("k", b"v")
    assert store.read_bytes("k") == b"v"


def test_store_runs_on_python_3_10():
    """store/ also runs in the Neuron images (Python 3.10): vermin must find nothing newer."""
    vermin = Path(sys.executable).parent / "vermin"
    out = subprocess.run([str(vermin), "--target=3.10-", "--no-tips", "--violations", str(ROOT / "store")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
