"""An existing cluster named by --address or RAY_ADDRESS: which API URL it means, the deploy
that carries the orchestra inline for an uploaded checkout, and job submission that waits out
a head with no agent yet."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import local
from cluster.errors import BatonError
from cluster.config import OrchestraConfig
from serve.builder import build_app, serve_config

REPO = Path(__file__).resolve().parents[2]
ORCHESTRA = REPO / "configs" / "orchestra.yaml"


def test_no_address_means_the_local_head_and_http_addresses_are_used_as_given(monkeypatch):
    monkeypatch.delenv(local.ADDRESS_VAR, raising=False)
    assert local.given_address() is None and local.api_url() == local.DASHBOARD_URL
    assert local.api_url("http://head:8265/") == "http://head:8265"
    monkeypatch.setenv(local.ADDRESS_VAR, "https://ray.example.com")
    assert local.given_address() == "https://ray.example.com" == local.api_url()
    # The option wins over the environment.
    assert local.api_url("http://other:8265") == "http://other:8265"


def test_an_unreachable_gcs_address_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("ray.dashboard.utils.ray_address_to_api_server_url", lambda address: (_ for _ in ()).throw(ConnectionError("refused")))
    with pytest.raises(BatonError, match="no Ray cluster answers at head:6379"):
        local.api_url("head:6379")


def test_an_uploaded_checkout_gets_the_orchestra_inline_and_builds_from_it():
    deployed = serve_config(ORCHESTRA, REPO, working_dir="gcs://_ray_pkg_abc.zip")
    [app] = deployed["applications"]
    assert app["runtime_env"]["working_dir"] == "gcs://_ray_pkg_abc.zip"
    args = app["args"]
    assert set(args) == {"orchestra", "code_version"} and "config" not in args
    # Storage resolved here: the cluster has none of this machine's relative paths.
    config = OrchestraConfig.model_validate(args["orchestra"])
    assert Path(config.storage).is_absolute() or "://" in config.storage
    local_args = serve_config(ORCHESTRA, REPO)["applications"][0]["args"]
    assert local_args["config"] == str(ORCHESTRA.resolve()) and "orchestra" not in local_args
    assert build_app(args) is not None


class FlakyHead:
    """Test double of a JobSubmissionClient whose head has no agent for the first calls."""

    def __init__(self, refusals: int, message: str = "Request failed with status code 500: No available agent to submit job"):
        self.refusals, self.message, self.calls = refusals, message, 0

    def submit_job(self, **job) -> str:
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError(self.message)
        return f"raysubmit_{job['entrypoint']}"


def test_submission_waits_out_a_head_without_an_agent(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    head = FlakyHead(refusals=3)
    assert local.submit(head, entrypoint="x") == "raysubmit_x" and head.calls == 4
    with pytest.raises(RuntimeError, match="No available agent"):
        local.submit(FlakyHead(refusals=5), attempts=5, entrypoint="x")
    other = FlakyHead(refusals=1, message="Request failed with status code 400: bad runtime_env")
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        local.submit(other, entrypoint="x")
    assert other.calls == 1
