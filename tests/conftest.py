"""Suite-wide pytest options: GPU tests are opt-in with --gpu."""

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true", help="run tests marked gpu (needs CUDA)")


def run_order(items: list) -> dict:
    """Each test file's place: files without Ray first, then those that start Ray clusters of
    their own, then those on the session's shared instance, since a cluster started while the
    shared one and its Serve app are up competes with them for the same cores (the two-node
    test took 310 s there, 136 s alone). Whole files move, so a file's tests keep their order."""
    order: dict = {}
    for item in items:
        place = 1 if "own_cluster" in item.keywords else 2 if "ray_session" in getattr(item, "fixturenames", ()) else 0
        order[item.path] = max(order.get(item.path, 0), place)
    return order


def pytest_collection_modifyitems(config, items):
    order = run_order(items)
    items.sort(key=lambda item: order[item.path])  # stable
    if config.getoption("--gpu"):
        return
    skip = pytest.mark.skip(reason="GPU test: pass --gpu on a machine with CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


S3_BUCKET = "baton-test"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol server on loopback (moto in server mode) with one bucket. The AWS
    variables point boto3 and s3fs at it, as they would at any S3-compatible store, so baton's
    code runs unchanged on ``s3://`` URIs."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 call otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield f"s3://{S3_BUCKET}"
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_uri(s3_server) -> str:
    """A fresh prefix of the test bucket for one test."""
    import uuid

    return f"{s3_server}/{uuid.uuid4().hex}"
