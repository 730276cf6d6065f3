"""The model registry on a Storage root: numbered, immutable model versions with checksummed
manifests, movable aliases (``champion``, ``previous``) changed by a quality-gated promote, and
per-environment approvals of versions (what a ``require_approval`` orchestra may serve).
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, Field, ValidationError, field_validator

from cluster.config import Strict, format_validation_error
from cluster.errors import Conflict, NotFound, ValidationFailed
from cluster.storage import Storage, validate_segment
from cluster.version import code_version

__all__ = [
    "CHAMPION",
    "PREVIOUS",
    "REF_SCHEME",
    "ChecksumError",
    "DataFile",
    "DatasetInfo",
    "GateRefused",
    "Manifest",
    "ModelRegistry",
    "check_alias",
    "check_environment",
    "check_name",
    "check_version",
    "parse_ref",
]

NAME_PATTERN = r"[a-z][a-z0-9_-]{0,62}"
VERSION_PATTERN = r"v[1-9][0-9]{0,8}"
ALIAS_PATTERN = r"[a-z][a-z0-9_-]{0,31}"
ENVIRONMENT_PATTERN = r"[a-z][a-z0-9_-]{0,62}"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
REF_SCHEME = "registry://"
CHAMPION, PREVIOUS = "champion", "previous"
MANIFEST, ALIASES, ALIASES_LOCK, MODEL_DIR, CLAIM = "manifest.json", "aliases.json", "aliases.lock", "model", "claim"
APPROVALS, APPROVALS_LOCK = "approvals.json", "approvals.lock"
_CLAIM_ATTEMPTS = 100
_CHUNK = 1 << 20


class GateRefused(Conflict):
    """promote() refused: the candidate does not beat the champion's metric by the margin."""


class ChecksumError(Conflict):
    """A stored version differs from its manifest: a changed, missing or extra file, or a bad manifest.

    409 conflict, not 500: the registry's state contradicts what it recorded, so the version
    must be re-registered; retrying the same request cannot succeed.
    """


class DataFile(Strict):
    uri: str = Field(..., min_length=1, description="URI the data was read from.")
    sha256: str = Field(..., pattern=SHA256_PATTERN, description="sha256 of the data (train.data's fingerprint for train).")
    rows: int = Field(..., ge=0, description="Rows used from this data.")


class DatasetInfo(DataFile):
    validation: DataFile | None = Field(None, description="The separate validation file, when one was given.")


class Manifest(Strict):
    name: str = Field(..., pattern=f"^{NAME_PATTERN}$", description="Model name, e.g. 'intent'.")
    version: str = Field(..., pattern=f"^{VERSION_PATTERN}$", description="Version assigned by the registry: v1, v2, ...")
    task: str = Field(..., min_length=1, description="What the model does, e.g. 'sequence-classification'.")
    base_model: str = Field(..., min_length=1, description="Model it was trained from: a hub id, a path or a registry ref.")
    labels: list[str] = Field(..., description="Output label names, in the model's label-id order.")
    metrics: dict[str, float | dict[str, Any]] = Field(
        ..., description="Evaluation results; nested dicts (e.g. per label) are addressed as 'a.b' by promote."
    )
    dataset: DatasetInfo = Field(..., description="The training data: URI, sha256 and rows (and a validation file).")
    recipe: dict[str, Any] = Field(..., description="The full training recipe, so the version can be reproduced.")
    code_version: str = Field(..., min_length=1, description="Git commit of the code that trained it (see cluster.version).")
    parent_version: str | None = Field(
        None, pattern=f"^{VERSION_PATTERN}$", description="Version of the same model this one was derived from."
    )
    created_at: AwareDatetime = Field(..., description="When the version was registered (UTC).")
    files: dict[str, str] = Field(..., min_length=1, description="Relative path below model/ -> sha256 of the file.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Anything else worth keeping with the version.")

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(timezone.utc)

    @field_validator("files")
    @classmethod
    def _safe_files(cls, files: dict[str, str]) -> dict[str, str]:
        for path, digest in files.items():
            for part in path.split("/"):
                validate_segment(part, f"file name {path!r}")
            if not re.fullmatch(SHA256_PATTERN[1:-1], digest):
                raise ValueError(f"sha256 of {path!r} is not 64 hex digits: {digest!r}")
        return files


def _invalid(value: object, what: str, rule: str) -> ValidationFailed:
    return ValidationFailed(f"invalid {what} {value!r}: {rule}")


def _check(value: object, pattern: str, what: str, rule: str) -> str:
    """Validate before any path is built: the pattern, then the storage's own segment rule."""
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise _invalid(value, what, rule)
    try:
        return validate_segment(value, what)
    except ValueError as error:
        raise ValidationFailed(str(error)) from None


def check_name(name: object) -> str:
    return _check(name, NAME_PATTERN, "model name", "use 1-63 of [a-z0-9_-], starting with a letter")


def check_version(version: object) -> str:
    return _check(version, VERSION_PATTERN, "version", "versions are v1, v2, ... as assigned by the registry")


def check_alias(alias: object) -> str:
    if isinstance(alias, str) and re.fullmatch(r"v[0-9]+", alias):
        raise _invalid(alias, "alias", "v<digits> is reserved for versions")
    return _check(alias, ALIAS_PATTERN, "alias", "use 1-32 of [a-z0-9_-], starting with a letter")


def check_environment(environment: object) -> str:
    return _check(environment, ENVIRONMENT_PATTERN, "environment", "use 1-63 of [a-z0-9_-], starting with a letter")


def parse_ref(ref: object) -> tuple[str, str | None, str | None]:
    """``[registry://]name``, ``name:v3`` or ``name@alias`` -> (name, version, alias)."""
    if not isinstance(ref, str):
        raise _invalid(ref, "model reference", "expected a string")
    body = ref.removeprefix(REF_SCHEME)
    if "@" in body:
        name, alias = body.split("@", 1)
        return check_name(name), None, check_alias(alias)
    if ":" in body:
        name, version = body.split(":", 1)
        return check_name(name), check_version(version), None
    return check_name(body), None, None


def _version_number(version: str) -> int:
    return int(version[1:])


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _local_files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def _hash_model_dir(model_dir: str | Path) -> dict[str, str]:
    """sha256 of every file to register; hidden entries (.cache, .gitattributes) are not model files."""
    source = Path(model_dir)
    if not source.is_dir():
        raise ValidationFailed(f"model_dir {str(source)!r} is not a directory")
    files = {
        rel: _sha256_file(source / rel)
        for rel in _local_files(source)
        if not any(part.startswith(".") for part in rel.split("/"))
    }
    if not files:
        raise ValidationFailed(f"model_dir {str(source)!r} holds no files")
    return files


def _verify_dir(directory: Path, manifest: Manifest) -> None:
    """Raise ChecksumError unless ``directory`` holds exactly the manifest's files, unchanged."""
    found, expected = set(_local_files(directory)), set(manifest.files)
    problems = {
        "missing": sorted(expected - found),
        "extra": sorted(found - expected),
        "changed": sorted(r for r in expected & found if _sha256_file(directory / r) != manifest.files[r]),
    }
    listed = "; ".join(f"{kind}: {paths}" for kind, paths in problems.items() if paths)
    if listed:
        raise ChecksumError(f"{directory} does not match the manifest of {manifest.name}:{manifest.version}: {listed}")


def _metric(manifest: Manifest, metric: str) -> float | None:
    """``metric`` may be a dotted path into nested metrics, e.g. 'per_label.oos.recall'."""
    value: Any = manifest.metrics
    for key in metric.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _gate(candidate: str, champion: str, metric: str, values: tuple[float, float | None], margin: float) -> None:
    """Refuse unless the candidate's value is at least the champion's plus the margin."""
    candidate_value, champion_value = values
    if champion_value is None:
        raise GateRefused(f"champion {champion} has no metric {metric!r} to compare; use force to promote anyway")
    needed = champion_value + margin
    if candidate_value < needed and not math.isclose(candidate_value, needed, rel_tol=1e-9, abs_tol=1e-12):
        raise GateRefused(
            f"{candidate} {metric} = {candidate_value} does not beat champion {champion} "
            f"{metric} = {champion_value} by the margin {margin} (needs >= {needed})"
        )


class ModelRegistry:
    """Models under ``<storage>/registry/``; a version counts once its manifest exists and never changes after.

    Alias and approval changes are serialised with a file lock per model on local storage;
    object stores have no lock, so concurrent changes there are last-writer-wins (each write
    is still whole). Approvals live beside the versions, so manifests stay immutable.
    """

    def __init__(self, storage: Storage):
        self.storage = storage

    def register(
        self,
        name: str,
        model_dir: str | Path,
        *,
        task: str,
        base_model: str,
        labels: list[str],
        metrics: Mapping[str, Any],
        dataset: Mapping[str, Any] | DatasetInfo,
        recipe: Mapping[str, Any],
        parent_version: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Copy ``model_dir`` into a new version and write its manifest last, so a crash leaves
        an incomplete version that list/show ignore."""
        check_name(name)
        if parent_version is not None:
            self._require_version(name, check_version(parent_version))
        files = _hash_model_dir(model_dir)
        fields = {
            "name": name, "version": "v1", "task": task, "base_model": base_model, "labels": labels,
            "metrics": metrics, "dataset": dataset, "recipe": recipe, "code_version": code_version(),
            "parent_version": parent_version, "created_at": datetime.now(timezone.utc), "files": files,
            "extra": extra or {},
        }
        try:
            # Validated before anything is written; "v1" stands in until a version is claimed.
            draft = Manifest.model_validate(fields)
        except ValidationError as error:
            raise ValidationFailed(format_validation_error(error, f"manifest of {name}")) from None
        version = self._claim_version(name)
        manifest = draft.model_copy(update={"version": version})
        try:
            self._upload(Path(model_dir), files, name, version)
            self.storage.write_json_atomic(self._path(name, version, MANIFEST), manifest.model_dump(mode="json"))
        except BaseException:
            with suppress(OSError):
                self.storage.fs.rm(self._path(name, version), recursive=True)
            raise
        return manifest

    def list_models(self) -> list[dict[str, Any]]:
        """Every model with at least one complete version, by name."""
        models = []
        for name in self._children(self._path(), NAME_PATTERN):
            versions = self._complete_versions(name)
            if versions:
                aliases = self._read_aliases(name)
                models.append({"name": name, "versions": versions, "aliases": aliases, "latest": versions[-1]})
        return models

    def versions(self, name: str) -> list[Manifest]:
        return [self.manifest(name, version) for version in self._require_model(name)]

    def manifest(self, name: str, version: str) -> Manifest:
        path = self._path(check_name(name), check_version(version), MANIFEST)
        try:
            data = self.storage.read_json(path)
        except FileNotFoundError:
            raise NotFound(f"model {name}:{version} not found") from None
        except ValueError as error:
            raise ChecksumError(f"manifest of {name}:{version} is not JSON: {error}") from None
        try:
            manifest = Manifest.model_validate(data)
        except ValidationError as error:
            raise ChecksumError(format_validation_error(error, f"manifest of {name}:{version}")) from None
        if (manifest.name, manifest.version) != (name, version):
            raise ChecksumError(f"manifest at {name}:{version} describes {manifest.name}:{manifest.version}")
        return manifest

    def resolve(self, ref: str) -> tuple[str, str]:
        """``name`` (latest), ``name:v3`` or ``name@alias``, optionally ``registry://``-prefixed."""
        name, version, alias = parse_ref(ref)
        if alias is not None:
            version = self.aliases(name).get(alias)
            if version is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
        if version is None:
            return name, self._require_model(name)[-1]
        self._require_version(name, version)
        return name, version

    def aliases(self, name: str) -> dict[str, str]:
        self._require_model(name)
        return self._read_aliases(name)

    def set_alias(self, name: str, version: str, alias: str) -> dict[str, Any]:
        """Point ``alias`` at an existing version; returns {name, alias, before, after} for the audit log."""
        check_alias(alias)
        self._require_version(check_name(name), check_version(version))

        def change(aliases: dict[str, str]) -> dict[str, Any]:
            before = aliases.get(alias)
            aliases[alias] = version
            return {"name": name, "alias": alias, "before": before, "after": version}

        return self._update_aliases(name, change)

    def fetch(self, ref: str, local_dir: str | Path | None = None) -> Path:
        """A local directory with the model files, every file verified against the manifest.

        Local storage without ``local_dir`` returns the stored directory itself; otherwise the
        files are copied to ``local_dir`` (default: a per-version cache in the temp dir), which
        must be empty or already hold this exact version. Raises ChecksumError on any mismatch.
        """
        name, version = self.resolve(ref)
        manifest = self.manifest(name, version)
        source = self._path(name, version, MODEL_DIR)
        if local_dir is None and self.storage.is_local:
            _verify_dir(Path(source), manifest)
            return Path(source)
        target = Path(local_dir) if local_dir is not None else self._cache_dir(name, version)
        if target.is_dir() and any(target.iterdir()):
            _verify_dir(target, manifest)
            return target
        return self._download(source, manifest, target)

    def check_gate(self, name: str, candidate_version: str, *, metric: str, margin: float) -> dict[str, Any]:
        """The promotion gate without moving an alias: does the candidate beat the champion?
        A model without a champion passes; a candidate without the metric does not."""
        candidate_value = _metric(self.manifest(name, candidate_version), metric)
        champion = self.aliases(name).get(CHAMPION)
        champion_value = _metric(self.manifest(name, champion), metric) if champion else None
        verdict = {"metric": metric, "margin": margin, "candidate_value": candidate_value, "champion": champion, "champion_value": champion_value}
        if candidate_value is None:
            return {**verdict, "passed": False, "reason": f"{name}:{candidate_version} has no numeric metric {metric!r}"}
        try:
            if champion is not None and champion != candidate_version:
                _gate(f"{name}:{candidate_version}", f"{name}:{champion}", metric, (candidate_value, champion_value), margin)
        except GateRefused as refused:
            return {**verdict, "passed": False, "reason": refused.message}
        return {**verdict, "passed": True, "reason": None}

    def promote(
        self, name: str, candidate_version: str, *, metric: str, margin: float, force: bool = False
    ) -> dict[str, Any]:
        """Make the candidate the champion if its ``metric`` (higher is better) is at least the
        champion's plus ``margin``, or there is no champion, or ``force``; the old champion
        becomes ``previous``. Raises GateRefused otherwise, leaving the aliases unchanged."""
        if not math.isfinite(margin):
            raise ValidationFailed(f"invalid margin {margin!r}: must be a finite number")
        candidate = self.manifest(name, candidate_version)
        candidate_value = _metric(candidate, metric)
        if candidate_value is None and not force:
            raise ValidationFailed(
                f"{name}:{candidate_version} has no numeric metric {metric!r} (metrics: {sorted(candidate.metrics)})"
            )

        def change(aliases: dict[str, str]) -> dict[str, Any]:
            before = aliases.get(CHAMPION)
            if before == candidate_version:
                raise Conflict(f"{name}:{candidate_version} is already the champion")
            champion_value = _metric(self.manifest(name, before), metric) if before else None
            if before and not force:
                _gate(f"{name}:{candidate_version}", f"{name}:{before}", metric, (candidate_value, champion_value), margin)
            aliases[CHAMPION] = candidate_version
            if before:
                aliases[PREVIOUS] = before
            return {
                "before": before, "after": candidate_version, "metric": metric,
                "candidate_value": candidate_value, "champion_value": champion_value, "forced": force,
            }

        return self._update_aliases(name, change)

    def approve(self, name: str, version: str, environment: str, principal: str) -> dict[str, Any]:
        """Approve ``name:version`` for ``environment``; returns {name, version, environment,
        before, after} for the audit log. Approving again keeps the first approval."""
        check_environment(environment)
        self._require_version(check_name(name), check_version(version))
        record = {"principal": principal, "approved_at": datetime.now(timezone.utc).isoformat()}

        def change(approvals: dict[str, dict[str, Any]]) -> dict[str, Any]:
            by_environment = approvals.setdefault(version, {})
            before = by_environment.get(environment)
            by_environment.setdefault(environment, record)
            return {"name": name, "version": version, "environment": environment, "before": before, "after": by_environment[environment]}

        return self._update_approvals(name, change)

    def revoke_approval(self, name: str, version: str, environment: str) -> dict[str, Any]:
        """Withdraw the approval of ``name:version`` for ``environment`` (a no-op when there is
        none); returns {name, version, environment, before, after} for the audit log."""
        check_environment(environment)
        self._require_version(check_name(name), check_version(version))

        def change(approvals: dict[str, dict[str, Any]]) -> dict[str, Any]:
            by_environment = approvals.get(version, {})
            before = by_environment.pop(environment, None)
            if not by_environment:
                approvals.pop(version, None)
            return {"name": name, "version": version, "environment": environment, "before": before, "after": None}

        return self._update_approvals(name, change)

    def is_approved(self, name: str, version: str, environment: str) -> bool:
        return environment in self.approvals(name).get(check_version(version), {})

    def approvals(self, name: str) -> dict[str, dict[str, Any]]:
        """{version: {environment: {principal, approved_at}}} of every approved version."""
        self._require_model(name)
        return self._read_approvals(name)

    def _path(self, *segments: str) -> str:
        return self.storage.path("registry", *segments)

    def _children(self, path: str, pattern: str) -> list[str]:
        """Names below ``path`` matching ``pattern``; listings are re-read, since another
        process may have added versions since the last one."""
        self.storage.fs.invalidate_cache(path)
        try:
            entries = self.storage.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        names = {posixpath.basename(entry.rstrip("/")) for entry in entries}
        return sorted(n for n in names if re.fullmatch(pattern, n))

    def _claimed_versions(self, name: str) -> list[str]:
        return sorted(self._children(self._path(name), VERSION_PATTERN), key=_version_number)

    def _complete_versions(self, name: str) -> list[str]:
        return [v for v in self._claimed_versions(name) if self.storage.exists(self._path(name, v, MANIFEST))]

    def _require_model(self, name: str) -> list[str]:
        versions = self._complete_versions(check_name(name))
        if not versions:
            raise NotFound(f"no model named {name!r}")
        return versions

    def _require_version(self, name: str, version: str) -> None:
        if not self.storage.exists(self._path(name, version, MANIFEST)):
            raise NotFound(f"model {name}:{version} not found")

    def _claim_version(self, name: str) -> str:
        """The next free version, claimed atomically so concurrent registrations never share one."""
        for _ in range(_CLAIM_ATTEMPTS):
            claimed = self._claimed_versions(name)
            version = f"v{_version_number(claimed[-1]) + 1 if claimed else 1}"
            if self._claim(name, version):
                return version
        raise Conflict(f"could not claim a new version of {name!r} in {_CLAIM_ATTEMPTS} attempts")

    def _claim(self, name: str, version: str) -> bool:
        path = self._path(name, version)
        try:
            if self.storage.is_local:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).mkdir()
            else:
                # Object stores have no directories: an exclusive create (S3 If-None-Match) claims.
                self.storage.fs.pipe_file(posixpath.join(path, CLAIM), b"", mode="create")
        except FileExistsError:
            return False
        return True

    def _upload(self, source: Path, files: dict[str, str], name: str, version: str) -> None:
        for rel in files:
            target = self._path(name, version, MODEL_DIR, *rel.split("/"))
            self.storage.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            self.storage.fs.put_file(str(source / rel), target)

    def _read_aliases(self, name: str) -> dict[str, str]:
        path = self._path(name, ALIASES)
        return self.storage.read_json(path) if self.storage.exists(path) else {}

    def _read_approvals(self, name: str) -> dict[str, dict[str, Any]]:
        path = self._path(name, APPROVALS)
        return self.storage.read_json(path) if self.storage.exists(path) else {}

    @contextmanager
    def _model_lock(self, name: str, lock_file: str) -> Iterator[None]:
        if not self.storage.is_local:
            yield
            return
        with open(self._path(name, lock_file), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _update_json(self, name: str, file: str, lock_file: str, read: Callable[[str], dict], change: Callable[[dict], dict]) -> dict[str, Any]:
        """Read-modify-write of one of a model's JSON files under its lock: ``change`` edits the
        dict in place (or raises to leave the file untouched) and returns the result."""
        with self._model_lock(name, lock_file):
            content = read(name)
            result = change(content)
            self.storage.write_json_atomic(self._path(name, file), content)
        return result

    def _update_aliases(self, name: str, change: Callable[[dict[str, str]], dict[str, Any]]) -> dict[str, Any]:
        return self._update_json(name, ALIASES, ALIASES_LOCK, self._read_aliases, change)

    def _update_approvals(self, name: str, change: Callable[[dict[str, dict[str, Any]]], dict[str, Any]]) -> dict[str, Any]:
        return self._update_json(name, APPROVALS, APPROVALS_LOCK, self._read_approvals, change)

    def _cache_dir(self, name: str, version: str) -> Path:
        storage_key = hashlib.sha256(self.storage.url().encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "baton-registry" / storage_key / name / version

    def _download(self, source: str, manifest: Manifest, target: Path) -> Path:
        """Copy into a staging sibling, verify, then rename into place, so no reader ever sees
        a partial copy; if a concurrent fetch got there first, its copy is verified instead."""
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            self.storage.fs.invalidate_cache(source)
            for stored in sorted(self.storage.fs.find(source)):
                local = staging / stored[len(source) + 1 :]
                local.parent.mkdir(parents=True, exist_ok=True)
                self.storage.fs.get_file(stored, str(local))
            _verify_dir(staging, manifest)
            try:
                staging.replace(target)
            except OSError:
                _verify_dir(target, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
