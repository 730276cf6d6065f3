"""Composition and streaming benchmark: a fan-out of three specialists against calling them
one after another, and an LLM agent's time to first streamed chunk against its whole answer.

Starts Ray (2 CPUs) and baton from ``configs/test.yaml`` on a temporary storage directory and
a free port, as ``tests/integration/conftest.py`` does, with in its copy of the config:

- ``profile-seq``: the ``profile`` pipeline's three steps (language, sentiment, entities) in
  ``sequence`` mode, so fan-out and sequence are also compared inside baton;
- ``local-writer``: an ``llm`` agent (provider ``local``) on a random-weight GPT-2 built from
  ``tests/unit/llm_doubles.build_tiny_gpt2``'s tokenizer, widened to ``--llm-layers`` x
  ``--llm-width`` so that generation takes measurable time; ``local-tiny`` on the test double
  itself (2 layers, width 32); and ``writer`` on the loopback OpenAI double, paced per word.

(a) Fan-out: ``--rounds`` interleaved rounds (the order rotates every round) of
``POST /v1/pipelines/profile`` (fan-out), ``POST /v1/pipelines/profile-seq`` (sequence) and
``POST /v1/agents/{language,sentiment,entities}/invoke`` called one after another by the client.
(b) Streaming: ``--streams`` interleaved runs per LLM agent of ``POST /v1/route`` naming the
agent, with ``stream: true`` (time to the first ``chunk`` event, and to the ``result`` event)
and without (the whole JSON answer).

Prints tables and rewrites the "## Composition and streaming" section of ``docs/benchmarks.md``.

Run: ``python -m benchmarks.composition [--rounds N] [--streams N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.request_path import (
    BENCH_RATE_LIMIT,
    CpuMeter,
    DOC,
    REPO,
    fmt,
    free_port,
    markdown_table,
    package,
    render_table,
    start_run,
    write_section,
)

TEST_CONFIG = REPO / "configs" / "test.yaml"
SECTION = "## Composition and streaming"
AGENTS = ("language", "sentiment", "entities")
FANOUT, SEQUENCE = "profile", "profile-seq"
TEXT = (
    "Tim Cook met Sundar Pichai in Paris on 3 March 2024 to sign a $4.5 million deal with Acme Corp; "
    "both said the staff were wonderful and the hotel was spotless."
)
# Words of the test double's vocabulary, so the prompt has no unknown tokens.
PROMPT = "the quick brown fox jumps over the lazy dog ? a small model writes short answers ."
LOCAL, TINY, REMOTE = "local-writer", "local-tiny", "writer"
VARIANTS = {
    "fanout": f"pipeline {FANOUT} (fan-out): POST /v1/pipelines/{FANOUT}",
    "sequence": f"pipeline {SEQUENCE} (sequence): POST /v1/pipelines/{SEQUENCE}",
    "client": "client, one after another: POST /v1/agents/{" + ",".join(AGENTS) + "}/invoke",
}
TARGET = 0.5  # fan-out latency at most half of one-after-another


# -- the LLM test doubles ------------------------------------------------------------------


def build_local_llm(directory: Path, layers: int, width: int, heads: int, context: int) -> dict[str, Any]:
    """``build_tiny_gpt2``'s word-level tokenizer and a random GPT-2 of the given shape. No end
    token in its generation config, so it always writes ``max_tokens`` tokens (random weights
    could otherwise pick the end token at any step and make runs incomparable)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.unit.llm_doubles import build_tiny_gpt2

    build_tiny_gpt2(directory, context_tokens=context)
    vocabulary = GPT2Config.from_pretrained(directory).vocab_size
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocabulary, n_positions=context, n_layer=layers, n_embd=width, n_head=heads,
        bos_token_id=None, eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.save_pretrained(directory)
    return {"layers": layers, "width": width, "heads": heads, "parameters": sum(p.numel() for p in model.parameters())}


def paced_openai_server(words: tuple[str, ...], per_word_s: float):
    """The loopback OpenAI double (tests/unit/llm_doubles.OpenAIServerDouble) writing one word
    every ``per_word_s``: streamed word by word, or the whole answer after the same time."""
    from tests.unit import llm_doubles

    def delta(content: str | None, finish: str | None) -> dict:
        return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {} if content is None else {"content": content}, "finish_reason": finish}]}

    class Paced(llm_doubles.OpenAIServerDouble):
        def answer(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
            if not body.get("stream"):  # a unary answer is ready when its last word is
                time.sleep(per_word_s * len(self.reply[: body.get("max_tokens") or len(self.reply)]))
            super().answer(handler, body)

        def _stream(self, handler: BaseHTTPRequestHandler, words: tuple[str, ...], finish: str, usage: dict | None) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.end_headers()
            for word in words:
                time.sleep(per_word_s)
                llm_doubles._send_event(handler, delta(word, None))
            llm_doubles._send_event(handler, delta(None, finish))
            if usage:
                llm_doubles._send_event(handler, {"object": "chat.completion.chunk", "choices": [], "usage": usage})
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()

    return Paced(reply=words)


def llm_agent(name: str, description: str, params: dict):
    """An llm agent as tests/integration/conftest.py's ``llm_agent`` makes it."""
    from actors.specialists.registry import validate_params
    from cluster.config import AgentSettings

    validate_params("llm", params)
    version = {"version": "v1", "weight": 100, "params": params, "resources": {"num_cpus": 0.1}, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    return AgentSettings(name=name, kind="llm", description=description, versions=[version])


def bench_config(storage_uri: str, local_dir: Path, tiny_dir: Path, openai_url: str, max_tokens: int):
    """configs/test.yaml on ``storage_uri`` with the rate limit raised, ``profile-seq`` and three LLM agents."""
    from cluster.config import OrchestraConfig, PipelineSettings
    from serve.builder import load

    config = load(TEST_CONFIG)
    profile = config.pipeline(FANOUT)
    if profile is None or profile.mode != "fanout" or tuple(s.agent for s in profile.steps) != AGENTS:
        raise SystemExit(f"{TEST_CONFIG}: pipeline {FANOUT!r} is no longer a fan-out of {AGENTS}")
    sequence = PipelineSettings(
        name=SEQUENCE, description="The profile pipeline's steps one after another.", mode="sequence",
        steps=[s.model_copy() for s in profile.steps],
    )
    local = {"provider": "local", "device": "cpu", "torch_threads": 1, "max_tokens": max_tokens, "temperature": 0}
    agents = [
        llm_agent(LOCAL, "A local language model that writes text (benchmark double).", {**local, "model": str(local_dir)}),
        llm_agent(TINY, "A tiny local language model that writes text (test double).", {**local, "model": str(tiny_dir)}),
        llm_agent(
            REMOTE, "Drafts replies in prose (a chat LLM behind an OpenAI-compatible server).",
            {"provider": "openai", "model": "test-double", "base_url": openai_url, "max_retries": 0, "max_tokens": max_tokens},
        ),
    ]
    auth = config.auth.model_copy(update={"rate_limit": config.auth.rate_limit.model_copy(update=BENCH_RATE_LIMIT)})
    config = config.model_copy(
        update={"storage": storage_uri, "auth": auth, "agents": [*config.agents, *agents], "pipelines": [*config.pipelines, sequence]}
    )
    return OrchestraConfig.model_validate(config.model_dump())


# -- measuring -----------------------------------------------------------------------------


def p50(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


@dataclass
class Series:
    client_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # baton's latency_ms
    steps_ms: dict[str, list[float]] = field(default_factory=dict)  # trace latency_ms, or per-agent client ms

    def step(self, name: str, ms: float) -> None:
        self.steps_ms.setdefault(name, []).append(ms)


@dataclass
class StreamSeries:
    first_chunk_ms: list[float] = field(default_factory=list)
    stream_total_ms: list[float] = field(default_factory=list)
    unary_ms: list[float] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


class Client:
    def __init__(self, base_url: str, key: str):
        import httpx

        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    def post(self, path: str, body: dict) -> tuple[float, dict]:
        started = time.perf_counter()
        response = self.http.post(path, json=body)
        ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"POST {path}: {response.status_code} {response.text[:300]}")
        return ms, response.json()

    def stream(self, path: str, body: dict) -> tuple[float, float, int, dict]:
        """(ms to the first chunk event, ms to the result event, chunks, the result)."""
        started = time.perf_counter()
        first, chunks, event = float("nan"), 0, None
        with self.http.stream("POST", path, json={**body, "stream": True}) as response:
            if response.status_code != 200:
                raise SystemExit(f"POST {path} (stream): {response.status_code} {response.read()[:300]!r}")
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: ") and event == "chunk":
                    chunks += 1
                    if chunks == 1:
                        first = (time.perf_counter() - started) * 1000
                elif line.startswith("data: ") and event == "result":
                    return first, (time.perf_counter() - started) * 1000, chunks, json.loads(line[len("data: "):])
                elif line.startswith("data: ") and event == "error":
                    raise SystemExit(f"POST {path} (stream): error event {line}")
        raise SystemExit(f"POST {path} (stream): the stream ended without a result event")

    def close(self) -> None:
        self.http.close()


def check_merged(payload: dict, where: str) -> None:
    result = payload.get("result") or {}
    missing = [a for a in AGENTS if a not in result]
    failed = [t for t in payload.get("trace", []) if t.get("status") != "ok"]
    if missing or failed:
        raise SystemExit(f"{where}: steps missing {missing} or failed {failed}")


def composition_round(client: Client, order: list[str], series: dict[str, Series]) -> None:
    for variant in order:
        if variant == "client":
            total = 0.0
            for agent in AGENTS:
                ms, payload = client.post(f"/v1/agents/{agent}/invoke", {"text": TEXT})
                total += ms
                series[variant].step(agent, ms)
                series[variant].server_ms.append(payload["latency_ms"])
            series[variant].client_ms.append(total)
            continue
        name = FANOUT if variant == "fanout" else SEQUENCE
        ms, payload = client.post(f"/v1/pipelines/{name}", {"text": TEXT})
        check_merged(payload, name)
        series[variant].client_ms.append(ms)
        series[variant].server_ms.append(payload["latency_ms"])
        for entry in payload["trace"]:
            series[variant].step(entry["step"], entry["latency_ms"])


def stream_run(client: Client, agent: str, stream_first: bool, out: StreamSeries | None) -> None:
    body = {"text": PROMPT, "agent": agent}
    results = []
    for streamed in ((True, False) if stream_first else (False, True)):
        if streamed:
            first, total, chunks, payload = client.stream("/v1/route", body)
            results.append(("stream", first, total, chunks, payload))
        else:
            total, payload = client.post("/v1/route", body)
            results.append(("unary", None, total, None, payload))
    if out is None:
        return
    for kind, first, total, chunks, payload in results:
        if payload.get("agent") != agent:
            raise SystemExit(f"/v1/route answered with {payload.get('agent')!r}, not {agent!r}")
        tokens = ((payload.get("result") or {}).get("usage") or {}).get("output_tokens")
        if kind == "stream":
            out.first_chunk_ms.append(first)
            out.stream_total_ms.append(total)
            out.chunks.append(chunks)
            if tokens is not None:
                out.tokens.append(tokens)
        else:
            out.unary_ms.append(total)


# -- reporting -----------------------------------------------------------------------------


def composition_tables(series: dict[str, Series]) -> tuple[list, list, list, dict[str, float]]:
    main = [
        [VARIANTS[v], str(len(s.client_ms)), fmt(p50(s.client_ms)), fmt(p95(s.client_ms)),
         fmt(p50(s.server_ms)) if v != "client" else f"{fmt(p50(s.server_ms))} per call"]
        for v, s in series.items()
    ]
    fan, seq, cli = (p50(series[v].client_ms) for v in ("fanout", "sequence", "client"))
    ratios = {
        "fanout/client": fan / cli,
        "fanout/sequence": fan / seq,
        "fanout/sequence (baton latency_ms)": p50(series["fanout"].server_ms) / p50(series["sequence"].server_ms),
    }
    ratio_rows = [
        ["fan-out / client one after another (p50 over p50)", fmt(ratios["fanout/client"]), f"≤ {TARGET}", "met" if ratios["fanout/client"] <= TARGET else "not met"],
        ["fan-out / sequence pipeline (p50 over p50)", fmt(ratios["fanout/sequence"]), f"≤ {TARGET}", "met" if ratios["fanout/sequence"] <= TARGET else "not met"],
        ["fan-out / sequence pipeline, baton's latency_ms", fmt(ratios["fanout/sequence (baton latency_ms)"]), "", ""],
    ]
    steps = []
    for agent in AGENTS:
        steps.append([
            agent,
            fmt(p50(series["client"].steps_ms.get(agent, []))),
            fmt(p50(series["sequence"].steps_ms.get(agent, []))),
            fmt(p50(series["fanout"].steps_ms.get(agent, []))),
        ])
    seq_steps = [p50(series["sequence"].steps_ms.get(a, [])) for a in AGENTS]
    fan_steps = [p50(series["fanout"].steps_ms.get(a, [])) for a in AGENTS]
    steps.append(["sum of the three", fmt(sum(p50(series["client"].steps_ms.get(a, [])) for a in AGENTS)), fmt(sum(seq_steps)), fmt(sum(fan_steps))])
    ratios["largest step / sum of steps (sequence)"] = max(seq_steps) / sum(seq_steps)
    ratios["sequence wrapper ms"] = p50(series["sequence"].server_ms) - sum(seq_steps)
    ratios["fanout wrapper ms"] = p50(series["fanout"].server_ms) - max(fan_steps)
    ratios["fanout slowest step / sequence slowest step"] = max(fan_steps) / max(seq_steps)
    # What a call costs outside baton's own latency_ms: the Serve proxy, the ingress replica's
    # Serve and FastAPI layers, JSON, the client. Paid once per pipeline call, once per client call.
    ratios["fanout outside ms"] = fan - p50(series["fanout"].server_ms)
    ratios["sequence outside ms"] = seq - p50(series["sequence"].server_ms)
    ratios["client outside ms per call"] = (cli - len(AGENTS) * p50(series["client"].server_ms)) / len(AGENTS)
    return main, ratio_rows, steps, ratios


def stream_rows(streams: dict[str, StreamSeries], models: dict[str, str]) -> list[list[str]]:
    rows = []
    for agent, s in streams.items():
        rows.append([
            f"{agent}: {models[agent]}", str(len(s.first_chunk_ms)),
            str(int(p50(s.tokens))) if s.tokens else "n/a", str(int(p50(s.chunks))) if s.chunks else "n/a",
            fmt(p50(s.first_chunk_ms)), fmt(p50(s.stream_total_ms)), fmt(p50(s.unary_ms)),
            fmt(p50(s.first_chunk_ms) / p50(s.stream_total_ms)), fmt(p50(s.first_chunk_ms) / p50(s.unary_ms)),
            fmt((p50(s.stream_total_ms) - p50(s.unary_ms)) / p50(s.chunks)) if s.chunks else "n/a",
        ])
    return rows


MAIN_COLUMNS = ("calls", "rounds", "p50 ms", "p95 ms", "baton latency_ms p50")
RATIO_COLUMNS = ("ratio", "value", "target", "verdict")
STEP_COLUMNS = ("step", "client call p50 ms (HTTP, one after another)", "in the sequence pipeline p50 ms", "in the fan-out pipeline p50 ms")
STREAM_COLUMNS = (
    "agent (model)", "runs", "tokens", "chunks", "first chunk p50 ms", "stream end p50 ms",
    "unary answer p50 ms", "first chunk / stream end", "first chunk / unary", "(stream end − unary) / chunks, ms",
)


def markdown(meta: dict[str, str], main, ratio_rows, steps, ratios, stream_table, notes: list[str]) -> str:
    lines = [
        SECTION,
        "",
        "Composition: the `profile` pipeline (a fan-out of the language, sentiment and entities agents) against",
        "the same three agents called one after another, by the client over HTTP and inside baton by the",
        f"`{SEQUENCE}` pipeline (the same steps in `sequence` mode, added to the benchmark's copy of the",
        "config). Streaming: `POST /v1/route` naming an `llm` agent, with `stream: true` (time to the first",
        "`chunk` event and to the `result` event, on the client) and without (the whole JSON answer).",
        "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['nproc']} CPUs (nproc), {meta['cpu']}, {meta['memory']} RAM; load average {meta['load_before']} "
        f"before the run; other load during the composition rounds {meta['other_composition']} cores, during the streaming runs "
        f"{meta['other_streaming']} cores (CPU the rest of the shared machine used, from /proc)",
        f"- Versions: ray {meta['ray']}, Python {meta['python']}, torch {meta['torch']}, transformers {meta['transformers']}, httpx {meta['httpx']}",
        f"- Cluster: `ray.init(num_cpus=2)`, Serve on 127.0.0.1 and a free port; `configs/test.yaml` (every agent, 2 ingress "
        f"replicas, each agent 1 replica of 0.1 CPU) on a temporary storage directory, rate limit raised; plus `{SEQUENCE}` and "
        f"the LLM agents below; an admin key from `cluster.keys.KeyStore`. Client: one `httpx.Client` (keep-alive) in the "
        "benchmark process, on the same cores.",
        f"- Text: `{TEXT}`",
        "",
        "### Fan-out against one after another",
        "",
        f"{meta['rounds']} rounds after {meta['warmup']} warm-up rounds; each round makes the three kinds of call once, in "
        "an order that rotates from round to round. The client row is the sum of its three calls.",
        "",
        *markdown_table(MAIN_COLUMNS, main, right=(1, 2, 3, 4)),
        "",
        *markdown_table(RATIO_COLUMNS, ratio_rows, right=(1,)),
        "",
        "Where the time goes (p50 of each step; inside the pipelines, baton's trace `latency_ms` of the step):",
        "",
        *markdown_table(STEP_COLUMNS, steps),
        "",
        *[f"- {line}" for line in explain(ratios, steps)],
        "",
        "### Streaming: first chunk against the whole answer",
        "",
        f"{meta['streams']} runs per agent after {meta['stream_warmup']} warm-up runs; each run makes one streamed and one "
        "unary request (which goes first alternates), the agents in rotating order. Every request asks for "
        f"{meta['max_tokens']} tokens (the agents' `max_tokens`); greedy decoding (`temperature: 0`).",
        "",
        *markdown_table(STREAM_COLUMNS, stream_table),
        "",
        *[f"- {line}" for line in meta["llm_notes"]],
        *[f"- {note}" for note in notes],
        "",
    ]
    return "\n".join(lines)


def explain(ratios: dict[str, float], steps) -> list[str]:
    share, slower = ratios["largest step / sum of steps (sequence)"], ratios["fanout slowest step / sequence slowest step"]
    return [
        f"Inside baton, fan-out / sequence ({ratios['fanout/sequence (baton latency_ms)']:.2f} on latency_ms) comes down to the "
        f"largest step's share of the sequence times the slow-down of the steps run at once: {share:.2f} x {slower:.2f} = {share * slower:.2f}.",
        f"Outside baton's latency_ms (Serve proxy, the ingress replica's Serve and FastAPI layers, JSON, client) a call costs "
        f"{ratios['fanout outside ms']:.2f} ms (fan-out), {ratios['sequence outside ms']:.2f} ms (sequence) and "
        f"{ratios['client outside ms per call']:.2f} ms per client call: a pipeline pays it once, the client three times, "
        "which is what brings fan-out against the client's one-after-another near or under 0.5 and leaves fan-out "
        "against the sequence pipeline above it.",
        f"A fan-out cannot take less than its slowest step: in the sequence pipeline the largest step is "
        f"{ratios['largest step / sum of steps (sequence)']:.2f} of the three steps' sum, so even with free cores and no "
        f"overhead fan-out / sequence could not go below that.",
        f"The three steps of the fan-out run at once on 2 shared cores: its slowest step took "
        f"{ratios['fanout slowest step / sequence slowest step']:.2f}x the slowest step of the sequence.",
        f"Around the steps: the sequence pipeline's latency_ms is {ratios['sequence wrapper ms']:.2f} ms more than the sum of its "
        f"steps, the fan-out's {ratios['fanout wrapper ms']:.2f} ms more than its slowest step; each client call pays the "
        "whole HTTP path (proxy, ingress, auth, audit) again.",
    ]


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.composition", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="measured composition rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="composition warm-up rounds (default 5)")
    parser.add_argument("--streams", type=int, default=20, help="measured streaming runs per LLM agent (default 20)")
    parser.add_argument("--stream-warmup", type=int, default=2, help="streaming warm-up runs per agent (default 2)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per LLM answer (default 64)")
    parser.add_argument("--llm-layers", type=int, default=6, help="layers of the local-writer GPT-2 (default 6)")
    parser.add_argument("--llm-width", type=int, default=768, help="embedding width of the local-writer GPT-2 (default 768)")
    parser.add_argument("--llm-heads", type=int, default=12, help="attention heads of the local-writer GPT-2 (default 12)")
    parser.add_argument("--per-word-ms", type=float, default=15.0, help="the OpenAI double's time per word (default 15)")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file whose section is rewritten (default docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.streams, args.max_tokens) < 1 or min(args.warmup, args.stream_warmup) < 0:
        parser.error("--rounds, --streams and --max-tokens must be >= 1, the warm-ups >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console, meta = start_run(
        "benchmarks.composition", argv,
        torch=package("torch"), transformers=package("transformers"), httpx=package("httpx"),
        rounds=str(args.rounds), warmup=str(args.warmup), streams=str(args.streams),
        stream_warmup=str(args.stream_warmup), max_tokens=str(args.max_tokens),
    )
    console.rule("baton composition and streaming benchmark")
    console.print(f"{meta['nproc']} CPUs ({meta['cpu']}), load average {meta['load_before']}; ray {meta['ray']}")

    import ray
    from ray import serve

    from cluster.keys import KeyStore
    from cluster.storage import Storage
    from serve.builder import APP_NAME, build_application, cluster_env
    from tests.unit.llm_doubles import WORDS

    words = tuple(f"{w} " for w in (WORDS.split() * (args.max_tokens // len(WORDS.split()) + 1))[: args.max_tokens])
    meter = CpuMeter()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as scratch, paced_openai_server(words, args.per_word_ms / 1000) as openai:
        scratch = Path(scratch)
        storage_uri = str(scratch / "storage")
        with console.status("building the GPT-2 test doubles..."):
            shape = build_local_llm(scratch / "gpt2", args.llm_layers, args.llm_width, args.llm_heads, context=512)
            from tests.unit.llm_doubles import build_tiny_gpt2

            build_tiny_gpt2(scratch / "tiny-gpt2", context_tokens=256)
        models = {
            LOCAL: f"random GPT-2, {shape['layers']} layers x {shape['width']}, {shape['parameters'] / 1e6:.1f} M parameters",
            TINY: "build_tiny_gpt2 as the tests use it (2 layers x 32)",
            REMOTE: f"loopback OpenAI double, {args.per_word_ms:g} ms per word",
        }
        meta["llm_notes"] = [
            f"`{LOCAL}` and `{TINY}`: provider `local` (transformers `generate` on a thread, `TextIteratorStreamer`), "
            "`device: cpu`, `torch_threads: 1`, one replica of 0.1 CPU, as `tests/integration/conftest.py`'s `local-writer`; "
            f"`{LOCAL}`'s weights are random (built from `build_tiny_gpt2`'s tokenizer, no end token so every answer has "
            f"{args.max_tokens} tokens); `{REMOTE}`: provider `openai` on `tests/unit/llm_doubles.OpenAIServerDouble`, paced "
            f"to one word every {args.per_word_ms:g} ms (a unary answer comes after the same {args.max_tokens} x "
            f"{args.per_word_ms:g} ms)",
            "the streamer flushes a word once the next one starts, so the first chunk comes after the second token",
        ]
        config = bench_config(storage_uri, scratch / "gpt2", scratch / "tiny-gpt2", openai.base_url, args.max_tokens)
        Path(storage_uri).mkdir(parents=True, exist_ok=True)
        key, _ = KeyStore(Storage(storage_uri)).create("admin", "benchmark")

        os.environ.update(cluster_env(REPO))
        os.environ.pop("RAY_ADDRESS", None)  # our own cluster, never a `make up` one
        port = free_port()
        started = time.monotonic()
        with console.status("starting Ray, Serve and baton (a minute or two on 2 cores)..."):
            ray.init(address="local", num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False,
                     namespace="baton-bench-composition", log_to_driver=False)
        client = None
        try:
            with console.status("starting Serve and baton..."):
                serve.start(http_options={"host": "127.0.0.1", "port": port})
                serve.run(build_application(config, storage_uri), name=APP_NAME, route_prefix="/")
            console.print(f"cluster up in {time.monotonic() - started:.1f} s; Serve on http://127.0.0.1:{port}")
            meter.label_actors()
            client = Client(f"http://127.0.0.1:{port}", key)

            # (a) composition
            series = {v: Series() for v in VARIANTS}
            kinds = list(VARIANTS)
            with console.status(f"composition: {args.warmup} warm-up rounds..."):
                for i in range(args.warmup):
                    composition_round(client, kinds[i % 3:] + kinds[: i % 3], {v: Series() for v in VARIANTS})
            before = meter.snapshot()
            with console.status(f"composition: {args.rounds} rounds..."):
                for i in range(args.rounds):
                    composition_round(client, kinds[i % 3:] + kinds[: i % 3], series)
            _, other = meter.usage(before, meter.snapshot())
            meta["other_composition"] = fmt(other)

            # (b) streaming
            agents = [LOCAL, TINY, REMOTE]
            streams = {a: StreamSeries() for a in agents}
            with console.status("streaming: warm-up..."):
                for i in range(args.stream_warmup):
                    for agent in agents:
                        stream_run(client, agent, i % 2 == 0, None)
            before = meter.snapshot()
            with console.status(f"streaming: {args.streams} runs per agent..."):
                for i in range(args.streams):
                    for agent in agents[i % 3:] + agents[: i % 3]:
                        stream_run(client, agent, i % 2 == 0, streams[agent])
            _, other = meter.usage(before, meter.snapshot())
            meta["other_streaming"] = fmt(other)
        finally:
            if client is not None:
                client.close()
            with console.status("shutting down..."):
                serve.shutdown()
                ray.shutdown()

    main_rows, ratio_rows, steps, ratios = composition_tables(series)
    stream_table = stream_rows(streams, models)
    ends = ", ".join(f"{p50(s.stream_total_ms) / p50(s.unary_ms):.2f}x ({agent})" for agent, s in streams.items())
    notes.append(
        f"a streamed answer ends later than the unary one: stream end / unary answer = {ends}. Every chunk crosses the "
        "replica's generator, the ingress, the Serve proxy and the client on the same 2 cores that generate; a model that "
        "writes a token in less time than that work takes (local-tiny) is slowed down by its stream, and where the tokens "
        "come slower (the paced double) the work hides in the waits"
    )
    for agent, s in streams.items():
        short = [t for t in s.tokens if t != args.max_tokens]
        if short:
            notes.append(f"{agent}: {len(short)} streamed answers had other than {args.max_tokens} tokens ({sorted(set(short))})")
    console.print(render_table("Fan-out against one after another", MAIN_COLUMNS, main_rows))
    console.print(render_table("Ratios", RATIO_COLUMNS, ratio_rows))
    console.print(render_table("Steps (p50 ms)", STEP_COLUMNS, steps))
    for line in explain(ratios, steps):
        console.print(f"  {line}")
    console.print(render_table("Streaming: first chunk against the whole answer", STREAM_COLUMNS, stream_table))
    for note in notes:
        console.print(f"note: {note}")
    if not args.no_doc:
        write_section(markdown(meta, main_rows, ratio_rows, steps, ratios, stream_table, notes), args.doc, SECTION)
        console.print(f"wrote the {SECTION!r} section of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
