"""One Ray instance (2 CPUs) and one baton Serve application for the whole session."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO / "configs" / "test.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from serve.builder import cluster_env

    os.environ.update(cluster_env(REPO))
    # Jobs run `python -m ...`: this interpreter's environment must come first on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # Point away from any `make up` cluster on this machine: tests own their instance.
    os.environ.pop("RAY_ADDRESS", None)
    if ray.is_initialized():
        # An earlier test connected this process to a Ray of its own (Serve's and Ray Data's
        # calls start one when none is up): the session's instance takes its place.
        ray.shutdown()
    context = ray.init(
        num_cpus=2,
        object_store_memory=256 * 1024 * 1024,
        include_dashboard=True,
        dashboard_port=free_port(),
        namespace="baton-tests",
        log_to_driver=False,
    )
    yield SimpleNamespace(dashboard_url=f"http://{context.dashboard_url}")
    ray.shutdown()


@pytest.fixture(scope="session")
def storage_uri(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("storage"))


@pytest.fixture(scope="session")
def openai_server():
    """Test double of an OpenAI-compatible LLM server on 127.0.0.1 (see tests/unit/llm_doubles.py)."""
    from tests.unit.llm_doubles import OpenAIServerDouble

    with OpenAIServerDouble() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """Test double of a local LLM: a tiny randomly initialised GPT-2 saved to a temporary path."""
    from tests.unit.llm_doubles import build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), context_tokens=256)


def llm_agent(name: str, description: str, params: dict):
    from actors.specialists.registry import validate_params
    from cluster.config import AgentSettings

    validate_params("llm", params)
    version = {"version": "v1", "weight": 100, "params": params, "resources": {"num_cpus": 0.05}, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    return AgentSettings(name=name, kind="llm", description=description, versions=[version])


@pytest.fixture(scope="session")
def tiny_classifiers(storage_uri, tmp_path_factory) -> str:
    """Registry models ``tiny:v1..v3`` (test doubles, see tests/unit/classifier_doubles.py); the ``reviews`` agent serves the champion."""
    from tests.unit.classifier_doubles import register_tiny_classifiers

    register_tiny_classifiers(storage_uri, tmp_path_factory.mktemp("tiny-classifier"))
    return "registry://tiny@champion"


def reviews_agent(model: str):
    from cluster.config import AgentSettings

    version = {"version": "v1", "weight": 100, "model": model, "resources": {"num_cpus": 0.05}, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    return AgentSettings(name="reviews", kind="classify", description="A tiny review classifier that rollouts replace.", routable=False, versions=[version])


@pytest.fixture(scope="session")
def test_config(storage_uri, openai_server, tiny_gpt2, tiny_classifiers):
    """configs/test.yaml on a temporary storage URI, plus two LLM agents whose models are test
    doubles (``writer`` on the loopback OpenAI server, ``local-writer`` on the tiny GPT-2) and
    ``reviews``, a registry classifier (a test double) for rollouts."""
    from serve.builder import load

    config = load(TEST_CONFIG)
    writer = llm_agent(
        "writer", "Drafts replies and answers questions in prose (a chat LLM).",
        {"provider": "openai", "model": "test-double", "base_url": openai_server.base_url, "max_retries": 0, "system_prompt": "Be brief."},
    )
    local = llm_agent(
        "local-writer", "A small local language model that writes text.",
        {"provider": "local", "model": str(tiny_gpt2), "device": "cpu", "torch_threads": 1, "max_tokens": 12, "temperature": 0},
    )
    return config.model_copy(update={"storage": storage_uri, "agents": [*config.agents, writer, local, reviews_agent(tiny_classifiers)]})


@pytest.fixture(scope="session")
def admin_key(storage_uri) -> str:
    from cluster.keys import KeyStore
    from cluster.storage import Storage

    key, _ = KeyStore(Storage(storage_uri)).create("admin", "integration-tests")
    return key


@pytest.fixture(scope="session")
def baton_url(ray_session, test_config, storage_uri, admin_key) -> str:
    from ray import serve

    from serve.builder import APP_NAME, build_application

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(test_config, storage_uri), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        pytest.fail("baton did not become healthy within 300 s")
    yield url
    serve.shutdown()


@pytest.fixture(scope="session")
def client(baton_url, admin_key):
    with httpx.Client(base_url=baton_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60) as http:
        yield http


@pytest.fixture
def new_key(client):
    """Make a fresh key (its own rate-limit bucket) with the given role."""

    def make(role: str = "invoke") -> str:
        response = client.post("/v1/admin/keys", json={"role": role, "name": f"test-{role}"})
        assert response.status_code == 201, response.text
        return response.json()["key"]

    return make
