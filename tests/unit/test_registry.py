"""Model registry: layout, manifests, numbering under concurrency, name validation, refs,
aliases, approvals per environment, checksum verification on fetch and the promote gate, on
local and memory:// storage."""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import cluster.registry as registry_module
from cluster.errors import Conflict, NotFound, ValidationFailed
from cluster.registry import ChecksumError, GateRefused, Manifest, ModelRegistry
from cluster.storage import Storage
from cluster.version import code_version

MODEL_FILES = {"config.json": b'{"architectures": ["X"]}', "model.safetensors": b"\x00weights\x01", "1_Pooling/config.json": b"{}"}
DATASET = {"uri": "/data/train.jsonl", "sha256": "a" * 64, "rows": 120}


def write_model(directory: Path, files: dict[str, bytes] = MODEL_FILES) -> Path:
    for rel, content in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(content)
    return directory


def register(registry: ModelRegistry, model_dir: Path, name: str = "intent", **overrides) -> Manifest:
    fields = {
        "task": "sequence-classification",
        "base_model": "distilbert-base-uncased",
        "labels": ["NEGATIVE", "POSITIVE"],
        "metrics": {"accuracy": 0.9},
        "dataset": DATASET,
        "recipe": {"epochs": 2, "lr": 5e-5},
    }
    return registry.register(name, model_dir, **{**fields, **overrides})


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return write_model(tmp_path / "trained")


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, monkeypatch):
    # Fetch caches go below tempfile.gettempdir(); keep them in the test's tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    if request.param == "local":
        return Storage(str(tmp_path / "store"))
    return Storage(request.getfixturevalue("s3_uri"))


@pytest.fixture
def registry(storage) -> ModelRegistry:
    return ModelRegistry(storage)


@pytest.fixture
def local_registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(Storage(str(tmp_path / "store")))


def test_exported_names():
    assert sorted(registry_module.__all__) == sorted([
        "CHAMPION", "PREVIOUS", "REF_SCHEME", "ChecksumError", "DataFile", "DatasetInfo", "GateRefused",
        "Manifest", "ModelRegistry", "check_alias", "check_environment", "check_name", "check_version", "parse_ref",
    ])
    assert issubclass(ChecksumError, Conflict) and ChecksumError.status == 409
    assert issubclass(GateRefused, Conflict) and GateRefused.status == 409


def test_register_writes_layout_and_exact_manifest(registry, storage, model_dir):
    before = datetime.now(timezone.utc)
    manifest = register(registry, model_dir, parent_version=None, extra={"notes": "first"})
    stored = storage.read_json(storage.path("registry", "intent", "v1", "manifest.json"))
    created = stored.pop("created_at")
    assert stored == {
        "name": "intent",
        "version": "v1",
        "task": "sequence-classification",
        "base_model": "distilbert-base-uncased",
        "labels": ["NEGATIVE", "POSITIVE"],
        "metrics": {"accuracy": 0.9},
        "dataset": {**DATASET, "validation": None},
        "recipe": {"epochs": 2, "lr": 5e-5},
        "code_version": code_version(),
        "parent_version": None,
        "files": {rel: hashlib.sha256(content).hexdigest() for rel, content in MODEL_FILES.items()},
        "extra": {"notes": "first"},
    }
    assert created.endswith("Z") and before - timedelta(seconds=1) <= datetime.fromisoformat(created) <= datetime.now(timezone.utc)
    assert registry.manifest("intent", "v1") == manifest
    for rel, content in MODEL_FILES.items():
        assert storage.fs.cat_file(storage.path("registry", "intent", "v1", "model", *rel.split("/"))) == content


def test_versions_are_numbered_and_sorted_numerically(registry, model_dir):
    for _ in range(10):
        register(registry, model_dir)
    manifest = register(registry, model_dir, parent_version="v10")
    assert (manifest.version, manifest.parent_version) == ("v11", "v10")
    assert [m.version for m in registry.versions("intent")] == [f"v{n}" for n in range(1, 12)]
    assert registry.resolve("intent") == ("intent", "v11")


def test_register_validates_everything_before_writing(registry, storage, model_dir, tmp_path):
    with pytest.raises(ValidationFailed, match=r"dataset\.sha256"):
        register(registry, model_dir, dataset={**DATASET, "sha256": "not-a-hash"})
    with pytest.raises(ValidationFailed, match=r"metrics"):
        register(registry, model_dir, metrics={"accuracy": "high"})
    with pytest.raises(ValidationFailed, match="is not a directory"):
        register(registry, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationFailed, match="holds no files"):
        register(registry, tmp_path / "empty")
    write_model(tmp_path / "odd", {"bad name.bin": b"x"})
    with pytest.raises(ValidationFailed, match="bad name.bin"):
        register(registry, tmp_path / "odd")
    with pytest.raises(NotFound, match="intent:v7"):
        register(registry, model_dir, parent_version="v7")
    assert not storage.exists(storage.path("registry"))


def test_hidden_files_are_not_registered(registry, model_dir):
    write_model(model_dir, {".cache/huggingface/lock": b"", ".gitattributes": b"*"})
    assert set(register(registry, model_dir).files) == set(MODEL_FILES)


def test_incomplete_version_is_ignored_but_its_number_is_not_reused(registry, storage, model_dir):
    register(registry, model_dir)
    crashed_upload = storage.path("registry", "intent", "v2", "model", "config.json")
    storage.fs.makedirs(storage.path("registry", "intent", "v2", "model"), exist_ok=True)
    storage.fs.pipe_file(crashed_upload, b"{}")
    assert [m.version for m in registry.versions("intent")] == ["v1"]
    assert registry.list_models() == [{"name": "intent", "versions": ["v1"], "aliases": {}, "latest": "v1"}]
    assert registry.resolve("intent") == ("intent", "v1")
    with pytest.raises(NotFound):
        registry.manifest("intent", "v2")
    assert register(registry, model_dir).version == "v3"


def test_failed_upload_leaves_no_version(registry, storage, model_dir, monkeypatch):
    def broken_put(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(storage.fs, "put_file", broken_put)
    with pytest.raises(OSError, match="disk full"):
        register(registry, model_dir)
    assert not storage.exists(storage.path("registry", "intent", "v1"))


def test_concurrent_registrations_get_distinct_versions(local_registry, model_dir):
    results: list[str] = []

    def work():
        results.append(register(local_registry, model_dir).version)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=lambda v: int(v[1:])) == [f"v{n}" for n in range(1, 9)]


def test_claim_retries_when_a_concurrent_creator_took_the_version(local_registry, model_dir, monkeypatch):
    register(local_registry, model_dir)
    stale = [[]]  # the first listing misses the v1 another creator has just made
    real = local_registry._claimed_versions
    monkeypatch.setattr(local_registry, "_claimed_versions", lambda name: stale.pop() if stale else real(name))
    assert register(local_registry, model_dir).version == "v2"
    assert local_registry.manifest("intent", "v1").version == "v1"


@pytest.mark.parametrize("bad", ["../x", "a/b", "v1/../../etc", "", "Intent", "x" * 64, "intent\n", ".", "9lives", None])
def test_bad_model_names_are_rejected_before_any_path(registry, storage, model_dir, bad):
    for call in (
        lambda: register(registry, model_dir, name=bad),
        lambda: registry.manifest(bad, "v1"),
        lambda: registry.versions(bad),
        lambda: registry.aliases(bad),
        lambda: registry.set_alias(bad, "v1", "champion"),
        lambda: registry.promote(bad, "v1", metric="accuracy", margin=0.0),
    ):
        with pytest.raises(ValidationFailed) as caught:
            call()
        assert repr(bad) in caught.value.message
    assert not storage.exists(storage.path("registry"))


@pytest.mark.parametrize("bad", ["v0", "1", "v01", "latest", "v1/../..", "../v1", "V1", "v1\n"])
def test_bad_versions_are_rejected(registry, model_dir, bad):
    register(registry, model_dir)
    with pytest.raises(ValidationFailed, match="invalid version"):
        registry.manifest("intent", bad)
    with pytest.raises(ValidationFailed, match="invalid version"):
        registry.set_alias("intent", bad, "champion")
    with pytest.raises(ValidationFailed, match="invalid version"):
        register(registry, model_dir, parent_version=bad)


@pytest.mark.parametrize("bad", ["v1", "v23", "../x", "a/b", "Champion", "x" * 33, "-x", ""])
def test_bad_aliases_are_rejected(registry, model_dir, bad):
    register(registry, model_dir)
    with pytest.raises(ValidationFailed) as caught:
        registry.set_alias("intent", "v1", bad)
    assert repr(bad) in caught.value.message
    assert registry.aliases("intent") == {}


def test_resolve_forms(registry, model_dir):
    register(registry, model_dir)
    register(registry, model_dir)
    registry.set_alias("intent", "v1", "champion")
    for ref, expected in [
        ("intent", "v2"),
        ("intent:v1", "v1"),
        ("intent@champion", "v1"),
        ("registry://intent", "v2"),
        ("registry://intent:v2", "v2"),
        ("registry://intent@champion", "v1"),
    ]:
        assert registry.resolve(ref) == ("intent", expected), ref
    for ref in ["other", "intent:v3", "intent@staging", "registry://other@champion"]:
        with pytest.raises(NotFound):
            registry.resolve(ref)
    for ref in ["intent@v1", "intent:v1:v2", "registry://", "intent:latest", "s3://intent", "intent@champion/../x"]:
        with pytest.raises(ValidationFailed):
            registry.resolve(ref)


def test_set_alias_reports_before_and_after_and_needs_the_version(registry, storage, model_dir):
    register(registry, model_dir)
    register(registry, model_dir)
    assert registry.set_alias("intent", "v1", "staging") == {"name": "intent", "alias": "staging", "before": None, "after": "v1"}
    assert registry.set_alias("intent", "v2", "staging") == {"name": "intent", "alias": "staging", "before": "v1", "after": "v2"}
    with pytest.raises(NotFound, match="intent:v9"):
        registry.set_alias("intent", "v9", "staging")
    with pytest.raises(NotFound, match="'ghost'"):
        registry.aliases("ghost")
    assert registry.aliases("intent") == {"staging": "v2"}
    assert storage.read_json(storage.path("registry", "intent", "aliases.json")) == {"staging": "v2"}


def test_concurrent_alias_changes_keep_a_whole_file_and_lose_nothing(local_registry, model_dir):
    register(local_registry, model_dir)
    register(local_registry, model_dir)
    names = [f"alias{n}" for n in range(24)]
    errors: list[BaseException] = []

    def work(alias: str):
        try:
            for version in ("v1", "v2", "v1"):
                local_registry.set_alias("intent", version, alias)
                json.loads((Path(local_registry.storage.root) / "registry/intent/aliases.json").read_text())
        except BaseException as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(alias,)) for alias in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    model_root = Path(local_registry.storage.root) / "registry/intent"
    assert json.loads((model_root / "aliases.json").read_text()) == {alias: "v1" for alias in names}
    assert not [p.name for p in model_root.iterdir() if ".tmp-" in p.name]


def test_list_models(registry, model_dir):
    assert registry.list_models() == []
    register(registry, model_dir, name="sentiment")
    register(registry, model_dir, name="intent")
    register(registry, model_dir, name="intent")
    registry.set_alias("intent", "v2", "champion")
    assert registry.list_models() == [
        {"name": "intent", "versions": ["v1", "v2"], "aliases": {"champion": "v2"}, "latest": "v2"},
        {"name": "sentiment", "versions": ["v1"], "aliases": {}, "latest": "v1"},
    ]


def test_fetch_returns_verified_local_files(registry, storage, model_dir, tmp_path):
    register(registry, model_dir)
    fetched = registry.fetch("registry://intent:v1")
    assert fetched.is_dir()
    assert {p.relative_to(fetched).as_posix(): p.read_bytes() for p in fetched.rglob("*") if p.is_file()} == MODEL_FILES
    if storage.is_local:
        assert fetched == Path(storage.path("registry", "intent", "v1", "model"))
    else:
        assert fetched.is_relative_to(tmp_path / "tmp")
    assert registry.fetch("intent") == fetched  # a verified cached copy is reused


def test_fetch_into_a_given_directory(registry, model_dir, tmp_path):
    register(registry, model_dir)
    target = tmp_path / "serve" / "intent"
    assert registry.fetch("intent:v1", target) == target
    assert (target / "1_Pooling" / "config.json").read_bytes() == b"{}"
    assert registry.fetch("intent:v1", target) == target
    write_model(tmp_path / "unrelated", {"notes.txt": b"mine"})
    with pytest.raises(ChecksumError, match="notes.txt"):
        registry.fetch("intent:v1", tmp_path / "unrelated")
    assert (tmp_path / "unrelated" / "notes.txt").read_bytes() == b"mine"


@pytest.mark.parametrize(
    "tamper, problem",
    [
        (lambda fs, root: fs.pipe_file(f"{root}/model.safetensors", b"\x00evil\x01"), "changed: ['model.safetensors']"),
        (lambda fs, root: fs.rm(f"{root}/config.json"), "missing: ['config.json']"),
        (lambda fs, root: fs.pipe_file(f"{root}/backdoor.py", b"import os"), "extra: ['backdoor.py']"),
    ],
)
def test_fetch_detects_tampering(registry, storage, model_dir, tmp_path, tamper, problem):
    register(registry, model_dir)
    tamper(storage.fs, storage.path("registry", "intent", "v1", "model"))
    with pytest.raises(ChecksumError) as caught:
        registry.fetch("intent:v1", tmp_path / "copy")
    assert problem in caught.value.message and "intent:v1" in caught.value.message
    assert not (tmp_path / "copy").exists()
    with pytest.raises(ChecksumError):
        registry.fetch("intent:v1")


def test_a_tampered_manifest_is_refused(registry, storage, model_dir):
    register(registry, model_dir)
    path = storage.path("registry", "intent", "v1", "manifest.json")
    storage.write_json_atomic(path, {**storage.read_json(path), "version": "v2"})
    with pytest.raises(ChecksumError, match="describes intent:v2"):
        registry.manifest("intent", "v1")
    storage.fs.pipe_file(path, b"{not json")
    with pytest.raises(ChecksumError, match="not JSON"):
        registry.fetch("intent:v1")


def test_promote_gate(registry, model_dir):
    register(registry, model_dir, metrics={"accuracy": 0.80, "per_label": {"oos": {"recall": 0.5}}})
    register(registry, model_dir, metrics={"accuracy": 0.81, "per_label": {"oos": {"recall": 0.7}}})
    register(registry, model_dir, metrics={"accuracy": 0.83, "f1": 0.9})

    first = registry.promote("intent", "v1", metric="accuracy", margin=0.01)
    assert first == {"before": None, "after": "v1", "metric": "accuracy", "candidate_value": 0.80,
                     "champion_value": None, "forced": False}
    assert registry.aliases("intent") == {"champion": "v1"}

    with pytest.raises(GateRefused) as caught:
        registry.promote("intent", "v2", metric="accuracy", margin=0.02)
    assert all(s in caught.value.message for s in ("0.81", "0.8", "0.02", "intent:v1", "intent:v2"))
    assert registry.aliases("intent") == {"champion": "v1"}

    exact = registry.promote("intent", "v2", metric="accuracy", margin=0.01)  # 0.81 >= 0.80 + 0.01
    assert (exact["before"], exact["after"]) == ("v1", "v2")
    assert registry.aliases("intent") == {"champion": "v2", "previous": "v1"}

    with pytest.raises(GateRefused, match="champion intent:v2 has no metric 'f1'"):
        registry.promote("intent", "v3", metric="f1", margin=0.0)
    with pytest.raises(ValidationFailed, match="intent:v3 has no numeric metric 'per_label.oos.recall'"):
        registry.promote("intent", "v3", metric="per_label.oos.recall", margin=0.0)
    with pytest.raises(Conflict, match="already the champion"):
        registry.promote("intent", "v2", metric="accuracy", margin=0.0, force=True)

    forced = registry.promote("intent", "v1", metric="accuracy", margin=0.05, force=True)
    assert forced == {"before": "v2", "after": "v1", "metric": "accuracy", "candidate_value": 0.80,
                      "champion_value": 0.81, "forced": True}
    assert registry.resolve("intent@champion") == ("intent", "v1")
    assert registry.resolve("intent@previous") == ("intent", "v2")


def test_promote_compares_nested_metrics_and_needs_a_known_version(registry, model_dir):
    register(registry, model_dir, metrics={"per_label": {"oos": {"recall": 0.5}}})
    register(registry, model_dir, metrics={"per_label": {"oos": {"recall": 0.6}}})
    registry.promote("intent", "v1", metric="per_label.oos.recall", margin=0.0)
    result = registry.promote("intent", "v2", metric="per_label.oos.recall", margin=0.05)
    assert (result["candidate_value"], result["champion_value"]) == (0.6, 0.5)
    with pytest.raises(NotFound):
        registry.promote("intent", "v5", metric="accuracy", margin=0.0)
    with pytest.raises(ValidationFailed, match="margin"):
        registry.promote("intent", "v1", metric="per_label.oos.recall", margin=float("nan"))


def test_approvals_round_trip_beside_an_unchanged_manifest(registry, storage, model_dir):
    register(registry, model_dir)
    register(registry, model_dir)
    manifest_path = storage.path("registry", "intent", "v2", "manifest.json")
    manifest_before = storage.fs.cat_file(manifest_path)
    assert registry.approvals("intent") == {} and not registry.is_approved("intent", "v2", "prod")

    change = registry.approve("intent", "v2", "prod", "cli:alice")
    assert change["before"] is None and change["after"]["principal"] == "cli:alice"
    assert (change["name"], change["version"], change["environment"]) == ("intent", "v2", "prod")
    assert registry.is_approved("intent", "v2", "prod")
    assert not registry.is_approved("intent", "v2", "test") and not registry.is_approved("intent", "v1", "prod")
    assert storage.read_json(storage.path("registry", "intent", "approvals.json")) == {"v2": {"prod": change["after"]}}
    assert storage.fs.cat_file(manifest_path) == manifest_before

    again = registry.approve("intent", "v2", "prod", "cli:bob")
    assert again["before"] == again["after"] == change["after"]  # the first approval stands

    registry.approve("intent", "v2", "test", "cli:bob")
    revoked = registry.revoke_approval("intent", "v2", "prod")
    assert revoked["before"] == change["after"] and revoked["after"] is None
    assert not registry.is_approved("intent", "v2", "prod") and registry.is_approved("intent", "v2", "test")
    assert registry.revoke_approval("intent", "v1", "prod")["before"] is None
    assert set(registry.approvals("intent")) == {"v2"}
    assert [m["versions"] for m in registry.list_models()] == [["v1", "v2"]]  # approvals.json is no version


def test_approvals_need_an_existing_version_and_a_valid_environment(registry, model_dir):
    with pytest.raises(NotFound):
        registry.approvals("intent")
    register(registry, model_dir)
    with pytest.raises(NotFound, match="intent:v9"):
        registry.approve("intent", "v9", "prod", "cli:alice")
    for bad in ("Prod", "../prod", "", "p/q"):
        with pytest.raises(ValidationFailed, match="environment"):
            registry.approve("intent", "v1", bad, "cli:alice")
    with pytest.raises(ValidationFailed, match="version"):
        registry.is_approved("intent", "latest", "prod")


def test_concurrent_approvals_lose_nothing(local_registry, model_dir, monkeypatch):
    for _ in range(3):
        register(local_registry, model_dir)
    read = local_registry._read_approvals

    def slow_read(name):
        content = read(name)
        time.sleep(0.01)  # widen the read-modify-write window: without the lock, updates get lost
        return content

    monkeypatch.setattr(local_registry, "_read_approvals", slow_read)
    pairs = [(version, f"env{n}") for version in ("v1", "v2", "v3") for n in range(6)]
    errors: list[BaseException] = []

    def work(version: str, environment: str):
        try:
            local_registry.approve("intent", version, environment, "cli:test")
        except BaseException as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=pair) for pair in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    approvals = json.loads((Path(local_registry.storage.root) / "registry/intent/approvals.json").read_text())
    assert sorted((v, e) for v, envs in approvals.items() for e in envs) == sorted(pairs)
