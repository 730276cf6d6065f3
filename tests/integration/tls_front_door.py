"""Run in a subprocess by test_tls.py: baton with ``http.tls`` from its config, on a Ray
instance of its own (the proxy's options are fixed when Serve starts); prints what HTTPS and
plain HTTP clients got as one JSON report line. The certificates are made here, by a test CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import sys
import tempfile
from pathlib import Path

import httpx
import ray
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ray import serve

from cluster.config import OrchestraConfig
from cluster.keys import KeyStore
from cluster.storage import Storage
from serve.builder import APP_NAME, build_application, cluster_env, http_options
from tests.integration.conftest import free_port
from tests.integration.two_node_cluster import ORCHESTRA

REPORT_PREFIX = "TLS-REPORT "
ONE_REPLICA = {"autoscaling": {"min_replicas": 1, "max_replicas": 1}, "resources": {"num_cpus": 0.1}}


def _certificate(subject: str, key, issuer: x509.Name | None, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(directory: Path) -> dict[str, Path]:
    """A test CA and a server certificate for 127.0.0.1 and localhost that it signed, as PEM files."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("baton test CA", ca_key, None, ca_key, ca=True)
    server_cert = _certificate("localhost", server_key, ca_cert.subject, ca_key, ca=False)
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    files["key"].chmod(0o600)
    return files


def attempt(call) -> dict:
    try:
        response = call()
        return {"status": response.status_code, "body": response.json()}
    except (httpx.HTTPError, ValueError) as error:
        return {"error": type(error).__name__}


def main() -> int:
    os.environ.update(cluster_env())
    os.environ.pop("RAY_ADDRESS", None)
    base = Path(tempfile.mkdtemp(prefix="baton-tls-"))
    files = make_certificates(base)
    storage_uri = str(base / "store")
    port = free_port()
    config = OrchestraConfig.model_validate(
        {
            **ORCHESTRA,
            "storage": storage_uri,
            # Relative paths resolve from the base directory, as from the repository root.
            "http": {"host": "127.0.0.1", "port": port, "tls": {"certfile": "server.pem", "keyfile": "server.key"}},
            "ingress": ONE_REPLICA,
            "agents": [{**agent, "versions": [{**version, **ONE_REPLICA} for version in agent["versions"]]} for agent in ORCHESTRA["agents"]],
        }
    )
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    try:
        serve.start(http_options=http_options(config, base))
        key, _ = KeyStore(Storage(storage_uri)).create("admin", "tls")
        serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
        route = {"json": {"text": "I love this so much"}, "headers": {"Authorization": f"Bearer {key}"}}
        with httpx.Client(verify=str(files["ca"]), timeout=60) as trusted, httpx.Client(timeout=10) as default:
            report = {
                "https": attempt(lambda: trusted.post(f"https://127.0.0.1:{port}/v1/route", **route)),
                "https_healthz": attempt(lambda: trusted.get(f"https://localhost:{port}/healthz")),
                # Not signed by a CA the client trusts: refused by the client.
                "https_untrusted": attempt(lambda: default.get(f"https://127.0.0.1:{port}/healthz")),
                "plain_http": attempt(lambda: default.get(f"http://127.0.0.1:{port}/healthz")),
            }
        print(REPORT_PREFIX + json.dumps(report), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
