"""The sysops orchestra: the log_triage and incident_entities specialists on real log lines and
incident texts (real MiniLM, real patterns, no Ray), the configs/examples/sysops.yaml orchestra
(with its optional responder block enabled), and the examples/triage_incidents.py driver with
in-process stand-ins for the Serve handles."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import re
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.invocation import Failure, Result
from actors.specialists.incident import IncidentEntitiesSpecialist, find_incident_entities
from actors.specialists.triage import SEVERITIES, TriageSpecialist, declared_signals
from cluster.errors import Unavailable, ValidationFailed

REPO = Path(__file__).resolve().parents[2]
SYSOPS = REPO / "configs/examples/sysops.yaml"


@pytest.fixture(scope="module")
def triage() -> TriageSpecialist:
    specialist = TriageSpecialist()
    specialist.load()
    return specialist


@pytest.fixture(scope="module")
def incident() -> IncidentEntitiesSpecialist:
    specialist = IncidentEntitiesSpecialist()
    specialist.load()
    return specialist


# --- log_triage: declared levels ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "severity", "source", "token"),
    [
        ("2024-03-12T10:15:32.123Z ERROR [db-pool] HikariPool-1 - Connection is not available", "error", "level", "ERROR"),
        ("<27>Mar 12 10:15:32 db-01 postgres[1234]: FATAL:  remaining connection slots are reserved", "critical", "level", "FATAL"),
        ("<30>Mar 12 10:15:32 web-01 app[99]: request served in 12 ms", "info", "syslog", "30"),
        ("<11>Mar 12 10:15:32 web-01 app[99]: payment worker stopped", "error", "syslog", "11"),
        ("E0312 10:15:32.123456    1 reflector.go:138] Failed to watch *v1.Pod", "error", "level", "E"),
        ("W0312 10:15:32.123456    1 warnings.go:70] v1beta1 Ingress is deprecated", "warning", "level", "W"),
        ('level=warn ts=2024-03-12T10:15:32Z msg="disk usage high" mount=/var/lib', "warning", "level", "warn"),
        ('{"level":50,"time":1710238532000,"msg":"payment provider returned an error"}', "error", "level", "50"),
        ('{"severity": "DEBUG", "message": "cache lookup for user 42"}', "debug", "level", "DEBUG"),
        ("[warn] 1234#0: *5 upstream server temporarily disabled while connecting to upstream", "warning", "level", "warn"),
        ("WARNING:root:cache size above 90%", "warning", "level", "WARNING"),
        ("npm ERR! code ELIFECYCLE", "error", "level", "ERR"),
        ("error: failed to push some refs to origin", "error", "level", "error"),
        ("2024-03-12 10:15:32,001 CRITICAL scheduler: no workers left", "critical", "level", "CRITICAL"),
        ('10.0.0.1 - - [12/Mar/2024:10:15:32 +0000] "GET /api/orders HTTP/1.1" 503 0 "-" "curl/8.0"', "error", "http_status", "503"),
        ('10.0.0.1 - - [12/Mar/2024:10:15:32 +0000] "POST /login HTTP/1.1" 401 23', "warning", "http_status", "401"),
        ('10.0.0.1 - - [12/Mar/2024:10:15:32 +0000] "GET /health HTTP/1.1" 200 2', "info", "http_status", "200"),
        ("upstream answered with HTTP/1.1 502 after 30 s", "error", "http_status", "502"),
    ],
)
def test_declared_level_decides(triage, line, severity, source, token) -> None:
    result = triage.predict([line])[0]
    assert (result["severity"], result["severity_source"]) == (severity, source)
    decider = result["signals"][0]
    assert decider["text"] == token and line[decider["start"] : decider["end"]] == token
    assert result["severity_score"] == pytest.approx({"level": 0.99, "syslog": 0.95, "http_status": 0.9}[source])


def test_first_level_token_wins_and_every_signal_is_listed() -> None:
    line = "<14>Mar 12 10:15:32 api[7]: INFO retried after ERROR from upstream, status=503"
    signals = declared_signals(line)
    assert [(s["text"], s["source"], s["severity"]) for s in signals] == [
        ("INFO", "level", "info"), ("ERROR", "level", "error"), ("14", "syslog", "info"), ("503", "http_status", "error"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "line",
    [
        "query on INFORMATION_SCHEMA.tables took 3 s",
        "the error-handling middleware was initialised",
        "rotating /var/log/ERROR.log and /var/log/app/DEBUG",
        "returned 200 rows from the orders table",
        "terror alert level raised",  # words that contain level names
    ],
)
def test_no_level_token_in_ordinary_words(line) -> None:
    assert [s for s in declared_signals(line) if s["source"] != "syslog"] == []


# --- log_triage: the zero-shot model -----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "severity"),
    [
        ("Server started, listening on port 8080", "info"),
        ("User alice logged in successfully", "info"),
        ("dial tcp 10.0.3.7:443: connect: connection refused", "error"),
        ("DNS lookup for api.internal failed: no such host", "error"),
        ("disk /data is 91% full", "warning"),
        ("replication lag on replica is 45 seconds", "warning"),
        ("certificate for api.example.com expires in 5 days", "warning"),
        ("Kernel panic - not syncing: Fatal exception in interrupt", "critical"),
        ("all instances of checkout service crashed; customers cannot pay", "critical"),
        ("entering function computeTotals with args={'items': 3}", "debug"),
    ],
)
def test_severity_without_a_level_is_zero_shot(triage, line, severity) -> None:
    result = triage.predict([line])[0]
    assert result["severity_source"] == "model" and result["signals"] == []
    assert result["severity"] == severity
    assert result["severity_score"] == max(result["scores"]["severity"].values())


@pytest.mark.parametrize(
    ("line", "component"),
    [
        ("deadlock detected while updating table orders, transaction rolled back", "database"),
        ("Redis connection pool exhausted, waiting for a free connection", "database"),
        ("DNS lookup for api.internal failed: no such host", "network"),
        ("2024-03-12T10:15:32Z ERROR No space left on device while writing /var/lib/docker", "storage"),
        ("inode usage at 88% on /var", "storage"),
        ("Failed password for invalid user admin from 203.0.113.9 port 22 ssh2", "auth"),
        ("sudo: pam_unix(sudo:auth): authentication failure; user=bob", "auth"),
        ("Back-off restarting failed container api in pod payments-7d9f8b6c5d-x2k4p", "kubernetes"),
        ("upstream timed out (110: Connection timed out) while reading response header from upstream", "web_server"),
        ("java.lang.NullPointerException at com.acme.checkout.CartService.total(CartService.java:88)", "application"),
        ("kernel: Out of memory: Killed process 4121 (java) total-vm:8123456kB", "memory_cpu"),
        ("CPU usage above 95% for 10 minutes on batch workers", "memory_cpu"),
    ],
)
def test_component_is_zero_shot(triage, line, component) -> None:
    result = triage.predict([line])[0]
    assert result["component"] == component
    assert result["component_score"] == max(result["scores"]["component"].values())


def test_result_shape_scores_and_monitoring_signal(triage) -> None:
    lines = ["ERROR disk full on /data", "Server started, listening on port 8080"]
    results = triage.predict(lines)
    assert results == [triage.predict([line])[0] for line in lines]  # a batch answers as single calls do
    for result in results:
        assert set(result) == {"severity", "severity_score", "severity_source", "component", "component_score", "scores", "signals"}
        assert list(result["scores"]["severity"]) == list(SEVERITIES)
        assert sum(result["scores"]["severity"].values()) == pytest.approx(1, abs=1e-3)
        assert sum(result["scores"]["component"].values()) == pytest.approx(1, abs=1e-3)
        assert triage.signals(result) == (result["severity"], result["severity_score"])
        assert triage.result(result).label == result["severity"]


def test_options_restrict_components(triage) -> None:
    line = "Failed password for invalid user admin from 203.0.113.9 port 22 ssh2"
    result = triage.predict([line], [{"components": ["database", "network"]}])[0]
    assert result["component"] in {"database", "network"} and set(result["scores"]["component"]) == {"database", "network"}
    with pytest.raises(ValidationFailed, match="options.components: \\['payments'\\] not configured"):
        triage.predict([line], [{"components": ["payments"]}])
    with pytest.raises(ValidationFailed, match="options.colour: unknown option"):
        triage.predict([line], [{"colour": "red"}])


def test_custom_components_and_switches() -> None:
    specialist = TriageSpecialist(
        {
            "components": {
                "payments": "payments: card declined, charge failed, refund, Stripe, PayPal, chargeback",
                "search": "search: Elasticsearch index, query parsing, shards unassigned, reindex",
            },
            "explicit_levels": False,
        }
    )
    specialist.load()
    declined, shards = specialist.predict(["ERROR Stripe charge failed: card declined", "WARN 3 shards unassigned on the products index"])
    assert (declined["component"], shards["component"]) == ("payments", "search")
    assert declined["severity_source"] == shards["severity_source"] == "model"  # the level tokens were ignored
    strict = TriageSpecialist({"min_component_similarity": 0.99})
    strict.load()
    assert strict.predict(["Server started, listening on port 8080"])[0]["component"] == "unknown"


@pytest.mark.parametrize(
    "params",
    [
        {"components": {"Bad Name": "a database"}},
        {"components": {"unknown": "whatever it is", "db": "database"}},
        {"components": {"db": "database"}},  # fewer than two
        {"components": {"db": "database", "net": "x"}},  # description too short
        {"temperature": 0},
        {"colour": "red"},
    ],
)
def test_bad_params_are_refused(params) -> None:
    with pytest.raises(ValidationError):
        TriageSpecialist(params)


# --- incident_entities ------------------------------------------------------------------------


def spans(specialist, text: str, options: dict | None = None) -> list[tuple[str, str, int, int]]:
    entities = specialist.predict([text], [options])[0]["entities"]
    for entity in entities:
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert 0 < entity["score"] <= 1
    for first, second in itertools.pairwise(entities):
        assert first["end"] <= second["start"]  # sorted, never overlapping
    return [(entity["type"], entity["text"], entity["start"], entity["end"]) for entity in entities]


def test_hosts_ips_and_error_codes_with_exact_offsets(incident) -> None:
    text = (
        "At 02:14 UTC db-01.prod.example.com (10.0.4.12) started refusing connections: "
        "ORA-00942 and ECONNREFUSED from api-7d9f8b6c5d-x2k4p."
    )
    assert spans(incident, text) == [
        ("HOST", "db-01.prod.example.com", 13, 35),
        ("IP_ADDRESS", "10.0.4.12", 37, 46),
        ("ERROR_CODE", "ORA-00942", 78, 87),
        ("ERROR_CODE", "ECONNREFUSED", 92, 104),
        ("HOST", "api-7d9f8b6c5d-x2k4p", 110, 130),
    ]


def test_pods_nodes_exit_codes_and_http_status(incident) -> None:
    text = "web-03 returned HTTP 503 for 12 minutes; pod payments-api-5c8d7f9b4-q7zkt was OOMKilled (exit code 137) on node/worker-node-3."
    assert spans(incident, text) == [
        ("HOST", "web-03", 0, 6),
        ("ERROR_CODE", "HTTP 503", 16, 24),
        ("HOST", "payments-api-5c8d7f9b4-q7zkt", 45, 73),
        ("ERROR_CODE", "OOMKilled", 78, 87),
        ("ERROR_CODE", "exit code 137", 89, 102),
        ("HOST", "worker-node-3", 112, 125),
    ]


def test_database_and_system_codes(incident) -> None:
    text = "mysql: ERROR 1045 (28000): Access denied for user 'app'@'10.1.2.3'; SQLSTATE[08006]; 0x80070005; signal 11 then SIGKILL; E1234"
    assert spans(incident, text) == [
        ("ERROR_CODE", "ERROR 1045 (28000)", 7, 25),
        ("IP_ADDRESS", "10.1.2.3", 57, 65),
        ("ERROR_CODE", "SQLSTATE[08006]", 68, 83),
        ("ERROR_CODE", "0x80070005", 85, 95),
        ("ERROR_CODE", "signal 11", 97, 106),
        ("ERROR_CODE", "SIGKILL", 112, 119),
        ("ERROR_CODE", "E1234", 121, 126),
    ]


def test_status_codes_in_context(incident) -> None:
    text = 'users are getting 502s; status=503; 504 Gateway Timeout; "GET /api HTTP/1.1" 500 12; ERR_CONNECTION_REFUSED, DEADLINE_EXCEEDED'
    assert [(kind, value) for kind, value, _, _ in spans(incident, text)] == [
        ("ERROR_CODE", "502"),
        ("ERROR_CODE", "503"),
        ("ERROR_CODE", "504 Gateway Timeout"),
        ("ERROR_CODE", "500"),
        ("ERROR_CODE", "ERR_CONNECTION_REFUSED"),
        ("ERROR_CODE", "DEADLINE_EXCEEDED"),
    ]


def test_internal_and_cluster_names(incident) -> None:
    text = "fluentd-x7k2p on ip-10-0-1-23.ec2.internal, host=db01, redis.default.svc.cluster.local:6379 and DC01.CORP.LOCAL"
    assert [(kind, value) for kind, value, _, _ in spans(incident, text)] == [
        ("HOST", "fluentd-x7k2p"),
        ("HOST", "ip-10-0-1-23.ec2.internal"),
        ("HOST", "db01"),
        ("HOST", "redis.default.svc.cluster.local"),
        ("HOST", "DC01.CORP.LOCAL"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "The server returned an error and the node is down. Host unreachable, the pod was restarted by the team.",
        "We use Python 3.11 and node.js, e.g. the U.S. office. Done.It was fine, see app.py, nginx.conf and main.tf.",
        "java.lang.NullPointerException at com.acme.checkout.CartService.total; org.apache.kafka.clients failed",
        "Encoding utf-8, hash sha-256, step-2 of the runbook, phase-1 of the migration, covid-19 leave, ipv-4 only.",
        "Incident INC-4521 and ticket OPS-1234 are linked; release 4.2.1 was rolled back; exit code 0; HTTP 200 OK.",
        "E0312 10:15:32.123456    1 reflector.go:138] Failed to watch the deployment",
        "Killed process 48213 (java) total-vm:6291456kB, anon-rss:2097152kB; vm: 8192kB",
        "Replication on the replica is slow; the broker is healthy; the instance is fine; the container is up.",
    ],
)
def test_no_false_entities_in_plain_text(incident, text) -> None:
    assert spans(incident, text) == []


def test_a_host_inside_a_url_or_an_email_is_not_a_host(incident) -> None:
    text = "See https://grafana.example.com/d/abc or mail ops@oncall.example.com; api.example.com is fine."
    assert [(kind, value) for kind, value, _, _ in spans(incident, text)] == [
        ("URL", "https://grafana.example.com/d/abc"),
        ("EMAIL", "ops@oncall.example.com"),
        ("HOST", "api.example.com"),
    ]
    # also when the other type is not asked for
    assert find_incident_entities("mail ops@oncall.example.com") == []


def test_types_in_params_and_options() -> None:
    text = "Bob restarted kafka-broker-2 at 10:40; errno ETIMEDOUT persisted until 192.168.10.5 was drained."
    default = IncidentEntitiesSpecialist()
    default.load()
    assert [kind for kind, *_ in spans(default, text)] == ["HOST", "ERROR_CODE", "IP_ADDRESS"]
    assert [value for _, value, *_ in spans(default, text, {"types": ["ERROR_CODE"]})] == ["ETIMEDOUT"]
    with pytest.raises(ValidationFailed, match="PERSON.*not enabled"):
        default.predict([text], [{"types": ["PERSON"]}])
    with_names = IncidentEntitiesSpecialist({"types": ["PERSON", "HOST", "ERROR_CODE"]})
    with_names.load()
    assert spans(with_names, text) == [
        ("PERSON", "Bob", 0, 3),
        ("HOST", "kafka-broker-2", 14, 28),
        ("ERROR_CODE", "ETIMEDOUT", 45, 54),
    ]
    with pytest.raises(ValidationError):
        IncidentEntitiesSpecialist({"types": ["HOSTNAME"]})
    assert default.describe()["kind"] == "incident_entities" and "HOST" in default.describe()["entity_types"]


# --- configs/examples/sysops.yaml -------------------------------------------------------------


def _real_class(module: str, name: str):
    if not (REPO / "actors/specialists" / f"{module}.py").is_file():
        pytest.skip(f"actors/specialists/{module}.py is not there yet; the {module!r} kind cannot be checked")
    return getattr(importlib.import_module(f"actors.specialists.{module}"), name)


@pytest.fixture
def sysops_kinds(monkeypatch):
    """The registry with the sysops kinds in it (until actors/specialists/registry.py registers them)."""
    from actors.specialists import registry

    classes = [
        TriageSpecialist, IncidentEntitiesSpecialist,
        _real_class("summarize", "SummarizeSpecialist"), _real_class("llm", "LlmSpecialist"),
    ]  # fmt: skip
    for cls in classes:
        monkeypatch.setitem(registry.SPECIALISTS, cls.kind, cls)


def test_sysops_orchestra_loads(sysops_kinds) -> None:
    from serve.builder import load

    config = load(SYSOPS)
    kinds = {agent.name: agent.kind for agent in config.agents}
    assert kinds == {"triage": "log_triage", "incident_entities": "incident_entities", "summarize": "summarize", "incident": "supervisor"}
    supervisor = config.agent("incident").supervisor
    assert (supervisor.team, supervisor.policy) == (["triage", "incident_entities", "summarize"], "all")
    report = config.pipeline("incident_report")
    assert [(s.agent, s.input) for s in report.steps] == [
        ("summarize", "input.text"), ("triage", "steps.summary.summary"), ("incident_entities", "input.text"),
    ]  # fmt: skip
    for agent in (a for a in config.agents if not a.composite):  # a supervisor runs in the ingress
        for version in agent.versions:
            assert version.resources.num_cpus <= 0.1 and version.autoscaling.max_replicas == 1
    rule = re.compile(config.router.rules[0].match.text_regex)
    assert rule.search("2024-03-12T10:15:32Z ERROR boom") and rule.search("<27>Mar 12 db-01 x") and not rule.search("summarise this thread")


def _enabled_responder(text: str, provider: str) -> str:
    """sysops.yaml with its commented responder agent and incident_reply pipeline uncommented."""
    lines = text.splitlines()
    out, enabling = [], False
    for line in lines:
        if line.startswith(("  # - name: responder", "  # - name: incident_reply")):
            enabling = True
        elif enabling and not line.startswith("  #"):
            enabling = False
        out.append("  " + line[4:] if enabling else line)
    enabled = "\n".join(out)
    if provider == "bedrock":
        enabled = re.sub(r"\n +(provider: openai|base_url: .*|model: qwen.*|api_key_env: .*)(?=\n)", "", enabled)
        enabled = re.sub(r"# (provider: bedrock|model: anthropic.*|region: .*)", r"\1", enabled)
    return enabled


@pytest.mark.parametrize("provider", ["openai", "bedrock"])
def test_the_commented_responder_is_a_valid_llm_agent(sysops_kinds, tmp_path, provider) -> None:
    from serve.builder import load

    path = tmp_path / "sysops-with-responder.yaml"
    path.write_text(_enabled_responder(SYSOPS.read_text(), provider))
    config = load(path)
    params = config.agent("responder").versions[0].params
    assert params["provider"] == provider and "JSON analysis" in params["system_prompt"]
    assert ("base_url" in params) == (provider == "openai")
    reply = config.pipeline("incident_reply")
    assert [(s.agent, s.input) for s in reply.steps] == [("incident", "input.text"), ("responder", "steps.analysis")]


# --- examples/triage_incidents.py -------------------------------------------------------------


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("triage_incidents", REPO / "examples/triage_incidents.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_incidents_file_format(driver) -> None:
    incidents = driver.parse_incidents("# db down\nline one\nline two\n\n\n\nanother\n\n# only a title\n")
    assert [(i.title, i.lines) for i in incidents] == [("db down", ["line one", "line two"]), ("incident 2", ["another"])]
    built_in = driver.parse_incidents(driver.BUILT_IN)
    assert len(built_in) == 3 and all(len(i.lines) >= 5 for i in built_in)


class _Answered:
    """Stands in for a DeploymentResponse: the answer, already computed."""

    def __init__(self, answer):
        self.answer = answer

    def result(self, timeout_s=None):
        return self.answer


class _InProcessHandle:
    """Test double of a Serve deployment handle: runs the real specialist in this process."""

    def __init__(self, specialist, fail: bool = False):
        self.specialist, self.fail, self.invoke, self.calls = specialist, fail, self, []

    def remote(self, invocation):
        self.calls.append(invocation)
        if self.fail:
            return _Answered(Failure(Unavailable("replica gone", retry_after_s=1)))
        output = self.specialist.predict([invocation.text], [invocation.options])[0]
        return _Answered(self.specialist.result(output))


class _Summarizer:
    """Test double for the summarize agent (another engineer's specialist): the first line."""

    def predict(self, texts, options):
        return [{"summary": text.split("\n\n")[0], "sentences": []} for text in texts]

    def result(self, output):
        return Result(output=output)


def _summarizer():
    """The real summarize specialist when it is there, else the double."""
    if not (REPO / "actors/specialists/summarize.py").is_file():
        return _Summarizer()
    specialist = importlib.import_module("actors.specialists.summarize").SummarizeSpecialist()
    specialist.load()
    return specialist


def test_driver_calls_every_agent_and_prints_a_table(driver, triage, incident, monkeypatch, capsys) -> None:
    from ray import serve

    handles = {
        "triage.v1": _InProcessHandle(triage),
        "incident_entities.v1": _InProcessHandle(incident),
        "summarize.v1": _InProcessHandle(_summarizer()),
    }
    monkeypatch.setattr(serve, "get_deployment_handle", lambda name, app_name: handles[name])
    incidents = driver.parse_incidents(driver.BUILT_IN)
    deployments = {"triage": "triage.v1", "incident_entities": "incident_entities.v1", "summarize": "summarize.v1"}
    analyses = driver.run(incidents, deployments, None, "baton", timeout_s=30)
    assert driver.failures(analyses) == 0
    first = analyses[0]["rows"]
    assert first[0]["triage"]["severity"] == "critical" and first[0]["triage"]["component"] == "database"
    assert "host db-01.prod.example.com" in driver.entity_text(first[0]["entities"])
    assert "ip 10.0.4.12" in driver.entity_text(first[2]["entities"]) and "code ECONNREFUSED" in driver.entity_text(first[2]["entities"])
    assert len(handles["triage.v1"].calls) == sum(len(i.lines) for i in incidents)
    assert handles["summarize.v1"].calls[0].options == {"max_sentences": 2}
    driver.print_tables(analyses)
    printed = capsys.readouterr().out
    assert "Primary database refusing connections" in printed and "summary:" in printed and "critical" in printed

    handles["incident_entities.v1"] = _InProcessHandle(incident, fail=True)
    analyses = driver.run(incidents[:1], deployments, None, "baton", timeout_s=30)
    assert driver.failures(analyses) == len(incidents[0].lines)
    assert analyses[0]["rows"][0]["errors"] == ["Unavailable: replica gone"]


def test_driver_names_the_config_when_the_app_or_an_agent_is_missing(driver, monkeypatch) -> None:
    from ray import serve
    from ray.serve.schema import ApplicationStatusOverview, ServeStatus

    monkeypatch.setattr(serve, "status", lambda: ServeStatus())
    with pytest.raises(driver.SetupError, match="'baton' is not running .*baton up -c configs/examples/sysops.yaml"):
        driver.find_deployments("baton", driver.AGENTS)

    app = ApplicationStatusOverview(status="RUNNING", message="", last_deployed_time_s=0.0, deployments=dict.fromkeys(["Ingress", "triage.v1", "summarize.v1"]))
    monkeypatch.setattr(serve, "status", lambda: ServeStatus(applications={"baton": app}))
    with pytest.raises(driver.SetupError, match="no deployment for agent\\(s\\) incident_entities .*baton up -c"):
        driver.find_deployments("baton", driver.AGENTS)

    app.deployments["incident_entities.v1"] = None
    app.deployments["responder.v1"] = None
    assert driver.find_deployments("baton", driver.AGENTS) == (
        {"triage": "triage.v1", "incident_entities": "incident_entities.v1", "summarize": "summarize.v1"}, "responder.v1", [],
    )  # fmt: skip
