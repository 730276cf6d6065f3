"""Storage over fsspec on an object store: listings are never served from a stale cache."""

from __future__ import annotations

import boto3

from cluster.storage import Storage


def test_an_object_store_lists_afresh_what_other_processes_wrote(s3_uri):
    """Replicas, actors and jobs write to the same bucket: a cached listing would hide their files."""
    storage = Storage(s3_uri)
    storage.write_json_atomic(storage.path("keys", "a.json"), {"n": 1})
    assert [p.rsplit("/", 1)[-1] for p in storage.fs.ls(storage.path("keys"), detail=False)] == ["a.json"]
    bucket, prefix = s3_uri.removeprefix("s3://").split("/", 1)
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/keys/b.json", Body=b'{"n": 2}')  # another process's write
    assert [p.rsplit("/", 1)[-1] for p in storage.fs.ls(storage.path("keys"), detail=False)] == ["a.json", "b.json"]
    assert storage.exists(storage.path("keys", "b.json"))
