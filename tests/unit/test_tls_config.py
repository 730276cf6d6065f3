"""``http.tls`` becomes Serve's ssl_* http_options, with paths from the repository root,
missing files and an unset password variable refused at deploy, and the CLI speaking https."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cluster.config import OrchestraConfig
from cluster.errors import ConfigError
from serve.builder import http_options
from serve.cli import _base_url

AGENTS = [{"name": "mood", "kind": "sentiment", "description": "how a text feels", "examples": ["I love it"]}]


def config(tls: dict | None = None, **http) -> OrchestraConfig:
    return OrchestraConfig.model_validate({"agents": AGENTS, "http": {"port": 8443, **http, "tls": tls}})


@pytest.fixture
def pem_files(tmp_path):
    (tmp_path / "tls").mkdir()
    for name in ("cert.pem", "key.pem", "clients.pem"):
        (tmp_path / "tls" / name).write_text("PEM")
    return tmp_path


def test_without_tls_the_proxy_speaks_plain_http(tmp_path, monkeypatch):
    monkeypatch.delenv("BATON_HTTP_PORT", raising=False)
    assert http_options(config(), tmp_path) == {"host": "127.0.0.1", "port": 8443, "request_timeout_s": 60.0}
    assert _base_url(config(host="0.0.0.0")) == "http://127.0.0.1:8443"


def test_tls_files_resolve_from_the_base_directory_and_the_password_from_the_environment(pem_files, monkeypatch):
    monkeypatch.delenv("BATON_HTTP_PORT", raising=False)
    monkeypatch.setenv("BATON_TLS_KEY_PASSWORD", "s3cret")
    tls = {"certfile": "tls/cert.pem", "keyfile": str(pem_files / "tls/key.pem"), "ca_certs": "tls/clients.pem",
           "keyfile_password_env": "BATON_TLS_KEY_PASSWORD"}
    options = http_options(config(tls), pem_files)
    assert options["ssl_certfile"] == str(pem_files / "tls/cert.pem")
    assert options["ssl_keyfile"] == str(pem_files / "tls/key.pem")
    assert options["ssl_ca_certs"] == str(pem_files / "tls/clients.pem")
    assert options["ssl_keyfile_password"] == "s3cret"
    assert _base_url(config(tls)) == "https://127.0.0.1:8443"


def test_a_missing_file_or_password_variable_fails_the_deploy_with_its_field(pem_files, monkeypatch):
    with pytest.raises(ConfigError, match=r"http.tls.keyfile: no file at .*nope.key"):
        http_options(config({"certfile": "tls/cert.pem", "keyfile": "tls/nope.key"}), pem_files)
    monkeypatch.delenv("BATON_TLS_KEY_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="BATON_TLS_KEY_PASSWORD is not set"):
        http_options(config({"certfile": "tls/cert.pem", "keyfile": "tls/key.pem", "keyfile_password_env": "BATON_TLS_KEY_PASSWORD"}), pem_files)


def test_tls_needs_both_files_and_names_no_secret_inline():
    with pytest.raises(ValidationError, match="keyfile"):
        config({"certfile": "cert.pem"})
    with pytest.raises(ValidationError, match="keyfile_password"):
        config({"certfile": "c.pem", "keyfile": "k.pem", "keyfile_password": "inline"})
