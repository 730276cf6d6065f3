"""Load shedding through real Serve and HTTP: the shared app is redeployed with a tiny admission
limit and a tiny Serve queue for the ingress, flooded, and put back as it was. Every answer is a
200 or a 503 overloaded with Retry-After in API.md's shape, whether the ingress's admission gate
or the Serve proxy's queue refused it; none is a 500 or waits out its deadline."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

FLOOD = 60  # concurrent requests per wave, against 2 replicas x 4 slots and a proxy queue of 4
WAVES = 3


def tight_config(config):
    """The shared test config with room for 1 running + 1 waiting request per ingress replica,
    4 requests per replica from the proxy and 4 more queued in it; no per-key rate limit in the way."""
    ingress = config.ingress.model_copy(update={
        "admission": config.ingress.admission.model_copy(update={"max_concurrent": 1, "max_queue": 1, "max_queue_wait_s": 0.2}),
        "max_ongoing_requests": 4,
        "max_queued_requests": 4,
    })
    auth = config.auth.model_copy(update={"rate_limit": config.auth.rate_limit.model_copy(update={"requests_per_s": 10_000, "burst": 10_000})})
    return config.model_validate({**config.model_dump(), "ingress": ingress.model_dump(), "auth": auth.model_dump()})


def deploy(config, storage_uri: str) -> None:
    from ray import serve

    from serve.builder import APP_NAME, build_application

    serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")


@pytest.fixture
def tight_app(baton_url, test_config, storage_uri):
    deploy(tight_config(test_config), storage_uri)
    try:
        yield baton_url
    finally:
        deploy(test_config, storage_uri)


async def flood(url: str, key: str, deadline_s: float) -> list[tuple[int, dict, httpx.Headers, float]]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=FLOOD, max_keepalive_connections=FLOOD)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=deadline_s, limits=limits) as client:

        async def one(n: int):
            started = time.monotonic()
            response = await client.post("/v1/agents/sentiment/invoke", json={"text": f"I really liked it, visit {n}"})
            return response.status_code, response.json(), response.headers, time.monotonic() - started

        answers = []
        for _ in range(WAVES):
            answers += await asyncio.gather(*(one(n) for n in range(FLOOD)))
        return answers


def test_a_flood_is_answered_200_or_503_overloaded_with_retry_after_and_then_served_again(tight_app, test_config, new_key):
    key = new_key("invoke")
    deadline_s = test_config.limits.agent_timeout_s
    answers = asyncio.run(flood(tight_app, key, deadline_s))  # a client timeout would raise here

    statuses = [status for status, _, _, _ in answers]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert 200 in statuses and 503 in statuses, statuses
    assert max(elapsed for _, _, _, elapsed in answers) < deadline_s
    refused = [(body, headers) for status, body, headers, _ in answers if status == 503]
    for body, headers in refused:
        assert body["error"]["code"] == "overloaded", body
        assert body["error"]["message"] and body["error"]["request_id"]
        assert headers["retry-after"].isdigit() and int(headers["retry-after"]) >= 1
    by_gate = [h for _, h in refused if "x-served-by" in h]  # an ingress replica answered
    by_proxy = [h for _, h in refused if "x-served-by" not in h]  # the Serve proxy's full queue
    assert by_gate and by_proxy, f"{len(by_gate)} refusals by the admission gate, {len(by_proxy)} by the proxy"

    after = httpx.post(f"{tight_app}/v1/agents/sentiment/invoke", json={"text": "calm again"}, headers={"Authorization": f"Bearer {key}"}, timeout=deadline_s)
    assert after.status_code == 200, after.text
    assert after.json()["result"]["label"] in {"POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED"}
