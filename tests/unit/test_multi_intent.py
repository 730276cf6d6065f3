"""Multi-intent requests (train.multi_intent), a supervisor's choice of team and the LLM
router's share in the routing evaluation (actors.routing_eval, `baton router eval`), on the
real MiniLM embeddings and the CLINC150 domains of configs/examples/clinc_domains.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from actors.embedding import Embedder
from actors.router import SemanticRouter, choose_for, team_segments
from actors.routing import LlmRouter
from actors.routing_eval import evaluate_router, evaluate_team, supervisor_chooser
from cluster.config import AgentSettings, LlmRouterSettings, RouterSettings, load_orchestra
from train.multi_intent import CONNECTORS, build, by_domain, config_examples, join_requests, main, read_jsonl

REPO = Path(__file__).resolve().parents[2]
CLINC_CONFIG = REPO / "configs/examples/clinc_domains.yaml"
# The shared datasets sit beside the checkout (../shared/datasets) or where BATON_DATASETS says.
DATASETS = Path(os.environ.get("BATON_DATASETS", REPO.parent / "shared" / "datasets"))
CLINC = DATASETS / "clinc150"
needs_clinc = pytest.mark.skipif(not CLINC.is_dir(), reason=f"shared datasets not found at {DATASETS} (set BATON_DATASETS)")

GROUPED = {
    "banking": [{"text": "what's my balance", "domain": "banking", "intent": "balance"},
                {"text": "transfer money to savings", "domain": "banking", "intent": "transfer"}],
    "travel": [{"text": "book a flight to paris?", "domain": "travel", "intent": "book_flight"}],
    "home": [{"text": "add milk to my shopping list", "domain": "home", "intent": "shopping_list"}],
    "work": [{"text": "when is payday", "domain": "work", "intent": "payday"}],
}


@pytest.fixture(scope="module")
def embed():
    return Embedder()


# -- the builder --------------------------------------------------------------------------


def test_join_drops_trailing_punctuation_and_needs_one_connector_per_gap():
    assert join_requests(["book a flight?", "what's my balance. "], ["? Also "]) == "book a flight? Also what's my balance"
    with pytest.raises(ValueError):
        join_requests(["a", "b"], [])


def test_labels_are_the_sorted_distinct_domains_of_the_joined_parts():
    rows = build(GROUPED, 200, seed=3, single_share=0.25, three_share=0.4)
    texts = {row["text"]: row["domain"] for rows in GROUPED.values() for row in rows}
    sizes = {1: 0, 2: 0, 3: 0}
    for row in rows:
        assert row["agents"] == sorted({texts[part] for part in row["parts"]})
        assert len(row["agents"]) == len(row["parts"])  # never two parts of one domain
        sizes[len(row["agents"])] += 1
        position = 0
        for part in row["parts"]:  # each part appears, in order, without its trailing punctuation
            position = row["text"].index(part.rstrip("?"), position)
        if len(row["parts"]) > 1:
            assert any(connector in row["text"] for connector in CONNECTORS)
    assert all(sizes.values()) and 0.1 < sizes[1] / len(rows) < 0.4 and sizes[3] < sizes[2]
    assert build(GROUPED, 200, seed=3, single_share=0.25, three_share=0.4) == rows
    assert build(GROUPED, 200, seed=4, single_share=0.25, three_share=0.4) != rows


def test_excluded_examples_and_out_of_scope_rows_are_left_out():
    rows = [{"text": "hi", "domain": "small_talk"}, {"text": "hello there", "domain": "small_talk"}, {"text": "xyz", "domain": "oos"}]
    assert by_domain(rows, exclude={"hi"}) == {"small_talk": [rows[1]]}
    examples = config_examples(CLINC_CONFIG)
    assert "i need an uber" in examples and len(examples) >= 200


@needs_clinc
def test_command_line_writes_a_seeded_set_without_the_config_examples(tmp_path):
    out = tmp_path / "multi.jsonl"
    args = ["--data", str(CLINC / "train.jsonl"), "--exclude-examples", str(CLINC_CONFIG), "--seed", "1", "--n", "80"]
    assert main([*args, "--out", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 80 and all(1 <= len(r["agents"]) <= 3 for r in rows)
    examples = config_examples(CLINC_CONFIG)
    assert not {part for r in rows for part in r["parts"]} & examples
    again = tmp_path / "again.jsonl"
    main([*args, "--out", str(again)])
    assert again.read_text() == out.read_text()


# -- the team evaluation ------------------------------------------------------------------


def test_exact_set_accuracy_precision_and_recall_are_pooled_over_rows():
    rows = [
        {"text": "one", "agents": ["a", "b"]},  # chose a: exact no, 1 hit of 1 chosen, 1 of 2 wanted
        {"text": "two", "agents": ["c"]},  # chose c, b: exact no, 1 of 2 chosen, 1 of 1 wanted
        {"text": "three", "agents": "a"},  # a single name counts as a list of one; exact
        {"text": "four", "agents": ["b", "c"]},  # chose c, b (order does not matter): exact
    ]
    chosen = {"one": ["a"], "two": ["c", "b"], "three": ["a"], "four": ["c", "b"]}
    report = evaluate_team(chosen.get, rows, team=["a", "b", "c"])
    assert report.n == 4 and report.exact_set_accuracy == 0.5
    assert report.precision == pytest.approx(5 / 6) and report.recall == pytest.approx(5 / 6)
    assert set(report.summary()) == {"exact_set_accuracy", "precision", "recall", "n"}
    lopsided = evaluate_team(lambda text: ["a", "b", "c"], rows[:2], team=["a", "b", "c"])
    assert (lopsided.precision, lopsided.recall, lopsided.exact_set_accuracy) == (pytest.approx(3 / 6), 1.0, 0.0)


def test_team_labels_must_be_team_agents():
    with pytest.raises(ValueError, match="ghost"):
        evaluate_team(lambda text: ["a"], [{"text": "x", "agents": ["a", "ghost"]}], team=["a"])
    with pytest.raises(ValueError, match="non-empty list"):
        evaluate_team(lambda text: ["a"], [{"text": "x", "agents": []}], team=["a"])


class CachedEmbed:
    """The embedder, remembering each text's vector: :meth:`prime` embeds a whole set in one
    batch, so the per-request scoring of an evaluation stays fast on a busy machine."""

    def __init__(self, embed):
        self.embed, self.vectors = embed, {}

    def prime(self, texts) -> None:
        missing = [text for text in dict.fromkeys(texts) if text not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.embed(missing)))

    def __call__(self, texts):
        self.prime(texts)
        return np.stack([self.vectors[text] for text in texts])


@pytest.fixture(scope="module")
def clinc(embed):
    config = load_orchestra(CLINC_CONFIG)
    cached = CachedEmbed(embed)
    return config, SemanticRouter(config.agents, config.router, cached), cached


def test_clinc_supervisor_is_the_chooser_the_ingress_uses(clinc):
    config, router, _ = clinc
    choose, team = supervisor_chooser(router, config, "assistant")
    settings = config.agent("assistant").supervisor
    assert team == [a.name for a in config.agents if not a.composite] and settings.policy == "router"
    text = "what is the balance of my checking account and i need a hotel room in rome for two nights"
    assert sorted(choose(text)) == ["banking", "travel"]
    assert choose("set an alarm for 7 am") == ["utility"]
    assert choose(text) == choose_for(router, text, settings.team, settings.threshold, settings.max_agents)
    with pytest.raises(ValueError, match="not a supervisor"):
        supervisor_chooser(router, config, "banking")


@needs_clinc
def test_clinc_supervisor_picks_the_domains_of_joined_requests(clinc):
    # Measured on this set (80 requests from train.jsonl minus the config's examples, seed 1):
    # exact-set 0.7625, precision 0.9308, recall 0.8970 (each part's best domain above 0.3,
    # max_agents 3); every domain above the threshold in any part gave 0.5125 / 0.8808 / 0.8061.
    config, router, cached = clinc
    grouped = by_domain(read_jsonl(CLINC / "train.jsonl"), exclude=config_examples(CLINC_CONFIG))
    rows = build(grouped, 80, seed=1)
    cached.prime([segment for row in rows for segment in team_segments(row["text"])])
    choose, team = supervisor_chooser(router, config, "assistant")
    report = evaluate_team(choose, rows, team=team)
    assert report.exact_set_accuracy >= 0.70, report.summary()
    assert report.precision >= 0.88 and report.recall >= 0.85, report.summary()


# -- the LLM router's share --------------------------------------------------------------

AGENTS = [
    AgentSettings(name="weather", kind="echo", description="weather forecasts, temperature, rain and snow",
                  examples=["will it rain tomorrow", "what's the temperature in Berlin"]),
    AgentSettings(name="banking", kind="echo", description="bank accounts, balances, transfers and cards",
                  examples=["what's my account balance", "transfer 50 dollars to savings"]),
]
ROWS = [
    {"text": "will it rain tomorrow", "agent": "weather"},  # an example: confidence ~1
    {"text": "what's my account balance", "agent": "banking"},
    {"text": "is the weather nice for a picnic by the lake", "agent": "weather"},
    {"text": "who won the football match", "agent": None},
]


def test_llm_share_counts_the_requests_the_llm_router_would_be_asked(embed):
    router = SemanticRouter(AGENTS, RouterSettings(threshold=0.5, calibration={"midpoint": 0.35, "temperature": 0.05}), embed)
    plain = evaluate_router(router, ROWS)
    assert plain.llm_share is None and "llm_share" not in plain.summary()
    confidences = [router.decide(row["text"]).confidence for row in ROWS]
    below = sorted(confidences)[1] + 1e-6  # the two least confident rows fall under it
    hybrid = LlmRouter(LlmRouterSettings(agent="llm", mode="hybrid", below=below), AGENTS, dispatcher=None)
    report = evaluate_router(router, ROWS, llm=hybrid)
    assert report.llm_share == 0.5 and report.summary()["llm_share"] == 0.5
    assert report.summary()["in_scope_accuracy"] == plain.summary()["in_scope_accuracy"]  # the LLM is not called
    always = LlmRouter(LlmRouterSettings(agent="llm", mode="llm"), AGENTS, dispatcher=None)
    assert evaluate_router(router, ROWS, llm=always).llm_share == 1.0


# -- `baton router eval` -------------------------------------------------------------------


def run_eval(args: list[str]):
    from serve.cli import router_app

    root = typer.Typer()
    root.add_typer(router_app, name="router")
    result = CliRunner().invoke(root, ["router", "eval", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cli_supervisor_eval_prints_exactly_the_team_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's storage (.baton) resolves here
    data = write_jsonl(tmp_path / "multi.jsonl", [
        {"text": "what is the balance of my checking account and i need a hotel room in rome for two nights", "agents": ["banking", "travel"]},
        {"text": "set an alarm for 7 am", "agents": ["utility"]},
    ])
    summary = run_eval(["--config", str(CLINC_CONFIG), "--data", str(data), "--supervisor", "assistant", "--json"])
    assert set(summary) == {"exact_set_accuracy", "precision", "recall", "n"} and summary["n"] == 2
    assert summary["exact_set_accuracy"] == 1.0


def test_cli_eval_reports_llm_share_only_with_an_llm_router(tmp_path, monkeypatch):
    from actors.specialists.registry import SPECIALISTS

    if "llm" not in SPECIALISTS:
        pytest.skip("the llm kind is not registered")
    monkeypatch.chdir(tmp_path)
    agents = [{"name": a.name, "kind": "echo", "description": a.description, "examples": a.examples} for a in AGENTS]
    base = {"storage": ".baton", "agents": agents, "router": {"calibration": {"midpoint": 0.35, "temperature": 0.05}}}
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(base))
    llm_agent = {"name": "llm", "kind": "llm", "description": "a general assistant that answers in prose",
                 "versions": [{"version": "v1", "weight": 100, "params": {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}}]}
    with_llm = tmp_path / "llm.yaml"
    with_llm.write_text(yaml.safe_dump({**base, "agents": [*agents, llm_agent],
                                        "router": {**base["router"], "llm": {"agent": "llm", "mode": "llm"}}}))
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    keys = {"in_scope_accuracy", "oos_recall", "in_scope_rejection", "n", "p50_ms", "p95_ms"}
    assert set(run_eval(["--config", str(plain), "--data", str(data), "--json"])) == keys
    summary = run_eval(["--config", str(with_llm), "--data", str(data), "--json"])
    assert set(summary) == keys | {"llm_share"} and summary["llm_share"] == 1.0
