"""The served OpenAPI document is honest. schemathesis, used as a library, loads /openapi.json
from the session's application and, for every operation, sends the requests it generates from
the document (its examples, coverage and fuzzing phases; schema-valid and schema-violating data;
seed SEED, at most MAX_EXAMPLES fuzzed examples per operation) and runs every one of its checks on
each answer: no server error, no undocumented status, content type or header, no response off its
schema, no schema-valid request refused, no schema-violating request accepted, no 405 without
Allow, no ignored authentication."""

from __future__ import annotations

import pytest
import schemathesis

pytestmark = pytest.mark.slow

SEED = 1
MAX_EXAMPLES = 15
# A document is judged by its bytes, which no JSON Schema describes: the file's type (415, API.md
# §1), whether it decodes, its pages, and what the query asks of it (422). The document states
# the rest; a schema-valid extraction may still meet these two answers, and only these.
DOCUMENT_VERDICTS = ["2xx", "3xx", "401", "403", "404", "409", "415", "422", "429", "5xx"]
# The chat door, pipelines and admin among the rest: the run must reach the whole surface.
MUST_EXERCISE = {"POST /v1/route", "POST /v1/chat/completions", "POST /v1/pipelines/{name}", "PUT /v1/admin/agents/{name}/traffic"}


@pytest.fixture(scope="module")
def exercised() -> set[str]:
    """The operations the run below sent at least one request to."""
    return set()


@pytest.fixture(scope="module")
def baton_schema(baton_url, client, test_config):
    # Its own key with a high limit, so the run explores the API rather than the rate limiter.
    created = client.post("/v1/admin/keys", json={"role": "admin", "name": "schemathesis", "rate_limit": {"requests_per_s": 1000, "burst": 1000}})
    assert created.status_code == 201, created.text
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "headers": {"Authorization": f"Bearer {created.json()['key']}"},
        "request-timeout": 60,
        "checks": {"enabled": True},
        # No example database: a failure found once is not replayed by the next run, which
        # would make the run depend on what ran before.
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
        "operations": [{"include-name": "POST /v1/extract", "checks": {"positive_data_acceptance": {"expected-statuses": DOCUMENT_VERDICTS}}}],
    })
    try:
        yield schemathesis.openapi.from_url(f"{baton_url}/openapi.json", config=config)
    finally:
        # It may have moved traffic weights at random: put the configured ones back.
        for agent in test_config.agents:
            if len(agent.versions) > 1:
                client.put(f"/v1/admin/agents/{agent.name}/traffic", json={"weights": {v.version: v.weight for v in agent.versions}})


schema = schemathesis.pytest.from_fixture("baton_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    # schemathesis 4.32.5 names each operation's subtest through Node._nodeid, which pytest 9
    # no longer has (it keeps Node._id); without it the lazy schema fails before any request.
    request.node._nodeid = request.node.nodeid


@schema.parametrize()
def test_every_operation_passes_every_check(case, exercised):
    exercised.add(case.operation.label)
    case.call_and_validate()


def test_the_run_reached_every_kind_of_operation(exercised):
    # Runs after the test above (file order), which fills ``exercised``.
    assert MUST_EXERCISE <= exercised, exercised
