"""Redeploying through Serve's Python API (as a rollout's candidate and the tests do): seconds
until Serve reports the application running again after an ingress-only change, with baton's
deployment versions and without them (Serve's default, a fresh random version per deploy).

On a fresh Ray instance (2 CPUs) with ``configs/test.yaml`` on a temporary storage URI: one first
deploy, then rounds of two redeploys each (a tighter admission gate, then back), alternating
versioned / unversioned / versioned so that a warm cache favours neither. Prints a Markdown table.

Run: ``python -m benchmarks.redeploy``.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUNDS = ("versioned", "unversioned", "versioned")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_deploy(config, storage_uri: str) -> float:
    from ray import serve

    from serve.builder import APP_NAME, build_application

    started = time.perf_counter()
    serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
    return time.perf_counter() - started


def tighter(config):
    """The same orchestra with a smaller admission gate: only the ingress's arguments change."""
    admission = config.ingress.admission.model_copy(update={"max_concurrent": 1, "max_queue": 1})
    return config.model_copy(update={"ingress": config.ingress.model_copy(update={"admission": admission})})


def main() -> int:
    import ray
    from ray import serve

    import serve.builder as builder

    os.environ.update(builder.cluster_env(REPO))
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    storage_uri = tempfile.mkdtemp(prefix="baton-redeploy-")
    config = builder.load(REPO / "configs" / "test.yaml").model_copy(update={"storage": storage_uri})
    versioned = builder.deployment_version
    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        print(f"first deploy: {timed_deploy(config, storage_uri):.1f} s", flush=True)
        rows = []
        for mode in ROUNDS:
            builder.deployment_version = versioned if mode == "versioned" else (lambda *parts: uuid.uuid4().hex[:16])
            there, back = timed_deploy(tighter(config), storage_uri), timed_deploy(config, storage_uri)
            rows.append((mode, there, back))
            print(f"{mode}: {there:.1f} s, back {back:.1f} s", flush=True)
    finally:
        builder.deployment_version = versioned
        serve.shutdown()
        ray.shutdown()
    print("\n| deployment versions | tighter admission (s) | and back (s) |\n| --- | ---: | ---: |")
    for mode, there, back in rows:
        print(f"| {mode} | {there:.1f} | {back:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
