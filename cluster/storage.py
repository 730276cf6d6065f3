"""One storage abstraction over fsspec: a local path by default, ``s3://`` on a cluster.

Every path below the storage root is built with :func:`Storage.path` from validated
segments, so user input never becomes a path on its own.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any

import fsspec

ROOT_ENV = "BATON_ROOT"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


def resolve_uri(uri: str) -> str:
    """A relative local path is taken from the working directory if it exists there, else
    from ``$BATON_ROOT`` (the repository root the cluster was started from), so a Ray job
    running in an unpacked copy of the repository still finds ``../shared/...`` and ``.baton``.
    """
    if "://" in uri or os.path.isabs(uri):
        return uri
    here = Path(uri).expanduser()
    root = os.environ.get(ROOT_ENV)
    if here.exists() or not root:
        return str(here.resolve())
    return str((Path(root) / uri).resolve())


def validate_segment(segment: str, what: str = "path segment") -> str:
    """Return ``segment`` if it is a safe single path component, else raise ValueError."""
    if not isinstance(segment, str) or not _SEGMENT.match(segment) or ".." in segment:
        raise ValueError(f"invalid {what} {segment!r}: use 1-128 of [A-Za-z0-9._=-], not starting with a symbol")
    return segment


class Storage:
    """A root URI (``/abs/path``, ``file://…``, ``s3://bucket/prefix``) and an fsspec filesystem."""

    def __init__(self, uri: str, **storage_options: Any):
        uri = resolve_uri(uri)
        self.uri = uri
        if "://" in uri and not uri.startswith("file://"):
            # Other processes write here too (replicas, actors, jobs): a cached listing would
            # hide their files, so an object store is listed afresh each time.
            storage_options.setdefault("use_listings_cache", False)
        self.fs, self.root = fsspec.core.url_to_fs(uri, **storage_options)
        self.root = self.root.rstrip("/") or "/"

    @property
    def is_local(self) -> bool:
        return "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def path(self, *segments: str) -> str:
        """Join validated segments below the root."""
        return posixpath.join(self.root, *(validate_segment(s) for s in segments))

    def url(self, *segments: str) -> str:
        """The full URI (with protocol) of a path below the root, for tools that take URIs."""
        path = self.path(*segments)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def read_json(self, path: str) -> Any:
        with self.fs.open(path, "r") as handle:
            return json.load(handle)

    def write_json_atomic(self, path: str, payload: Any) -> None:
        """Write JSON so readers see the old or the new file, never a partial one.

        Local filesystems get write-to-temp + rename; S3 object PUTs are atomic already.
        """
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        data = json.dumps(payload, indent=2, sort_keys=True)
        if not self.is_local:
            with self.fs.open(path, "w") as handle:
                handle.write(data)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "w") as handle:
            handle.write(data)
        Path(tmp).replace(path)
