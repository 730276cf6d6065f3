"""Cost metering in the agent replica: each Result carries the CPU-seconds its call burnt (all
the replica's threads, batches split evenly, streams summed) and GPU-seconds where GPUs are
reserved, beside the token usage it already declared. Runs AgentVersion without Ray or Serve."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

import serve.agent
from actors.invocation import Chunk, Failure, Invocation, Result
from actors.specialists.base import Specialist
from cluster.errors import ValidationFailed
from serve.agent import AgentVersion, UsageMeter, charged_evenly

BURN_S = 0.08
# Other threads of this process (pytest, asyncio) may add a little; none can make a call cheaper.
SLACK_S = 0.05


def burn_cpu(seconds: float) -> None:
    """Spin until this thread has used ``seconds`` of CPU (wall time depends on the load)."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


class CpuBurnerDouble(Specialist):
    """Test double for a specialist: each text burns a known amount of CPU, on the calling
    thread or on a helper thread (as torch and ONNX Runtime pools do), optionally sleeps
    (wall time without CPU), and declares token usage; the text "bad" fails."""

    kind = "cpu-burner-double"
    batchable = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        burn_s: float = Field(BURN_S, description="CPU-seconds each text burns.")
        sleep_s: float = Field(0.0, description="Wall seconds each text sleeps after burning.")
        on_helper_thread: bool = Field(False, description="Burn on a helper thread instead of the caller's.")

    def _model_name(self) -> str:
        return "cpu-burner-double"

    def _load(self) -> None:
        pass

    def _predict(self, texts: list[str], options: list) -> list[dict]:
        if "bad" in texts:
            raise ValidationFailed("text: 'bad' is refused by the double")
        for _ in texts:
            if self.params.on_helper_thread:
                helper = threading.Thread(target=burn_cpu, args=(self.params.burn_s,))
                helper.start()
                helper.join()
            else:
                burn_cpu(self.params.burn_s)
            time.sleep(self.params.sleep_s)
        return [{"text": text} for text in texts]

    def result(self, output: dict) -> Result:
        return Result(output=output, usage={"input_tokens": 3, "output_tokens": 5})


class StreamingBurnerDouble(CpuBurnerDouble):
    """Test double for a streaming specialist: each of three chunks burns ``burn_s`` of CPU."""

    kind = "streaming-burner-double"
    batchable = False
    streams = True

    def stream(self, invocation: Invocation):
        for word in ("one", "two", "three"):
            burn_cpu(self.params.burn_s)
            yield Chunk(word)
        yield Result(output={"text": "one two three"}, usage={"input_tokens": 3, "output_tokens": 3})


def agent_with(specialist: type[Specialist], monkeypatch, gpus: float = 0.0, **params) -> AgentVersion:
    monkeypatch.setattr(serve.agent, "create_specialist", lambda kind, p: specialist(p))
    monkeypatch.setattr(serve.agent, "reserved_gpus", lambda: gpus)
    batching = {"max_batch_size": 8, "batch_wait_timeout_s": 0.001}
    # The class under the Serve decorator, built in-process; torch's thread count is left as it is.
    return AgentVersion.func_or_class("cost", "v1", specialist.kind, params, torch.get_num_threads(), batching)


def assert_charged(usage: dict, burnt_s: float) -> None:
    assert burnt_s <= usage["cpu_s"] < burnt_s + SLACK_S, usage


def test_a_call_is_charged_the_cpu_it_burns_not_its_wall_time(monkeypatch):
    agent = agent_with(CpuBurnerDouble, monkeypatch, sleep_s=0.2)
    agent.specialist.batchable = False  # the unbatched path: the whole stream drained on a worker thread

    result = asyncio.run(agent.invoke(Invocation(text="hello")))

    assert_charged(result.usage, BURN_S)
    assert result.usage["input_tokens"] == 3 and result.usage["output_tokens"] == 5
    assert "gpu_s" not in result.usage  # no GPU reserved, none charged


def test_cpu_burnt_on_a_helper_thread_is_charged_to_the_call(monkeypatch):
    agent = agent_with(CpuBurnerDouble, monkeypatch, on_helper_thread=True)

    [result] = agent._predict_metered([Invocation(text="hello")])

    assert_charged(result.usage, BURN_S)


def test_a_batch_is_split_evenly_and_a_failed_item_keeps_its_failure(monkeypatch):
    agent = agent_with(CpuBurnerDouble, monkeypatch)
    texts = ["a", "b", "bad", "c"]

    answers = agent._predict_metered([Invocation(text=text) for text in texts])

    assert isinstance(answers[2], Failure)
    results = [answers[i] for i in (0, 1, 3)]
    shares = {result.usage["cpu_s"] for result in results}
    assert len(shares) == 1  # one equal share per item
    # The whole batch is refused before any work, then each good item burns once; 4 items share it.
    assert 3 * BURN_S / 4 <= shares.pop() < (3 * BURN_S + SLACK_S) / 4
    assert all(result.usage["output_tokens"] == 5 for result in results)


def test_a_stream_is_charged_for_all_its_chunks(monkeypatch):
    agent = agent_with(StreamingBurnerDouble, monkeypatch)

    async def collect():
        return [item async for item in agent.stream(Invocation(text="go"))]

    items = asyncio.run(collect())

    assert [item.text for item in items[:-1]] == ["one", "two", "three"]
    assert_charged(items[-1].usage, 3 * BURN_S)
    assert items[-1].usage["output_tokens"] == 3


def test_gpu_seconds_are_wall_time_times_the_gpus_reserved(monkeypatch):
    agent = agent_with(CpuBurnerDouble, monkeypatch, gpus=0.5, burn_s=0.0, sleep_s=0.2)

    [result] = agent._predict_metered([Invocation(text="hello")])

    assert 0.5 * 0.2 <= result.usage["gpu_s"] < 0.5 * 0.2 + SLACK_S
    assert result.usage["cpu_s"] < SLACK_S  # sleeping costs GPU reservation, not CPU


class FakeClocks:
    """Test double for the process CPU clock and the wall clock, moved by hand."""

    def __init__(self):
        self.cpu = self.wall = 100.0

    def spend(self, cpu_s: float, wall_s: float) -> None:
        self.cpu += cpu_s
        self.wall += wall_s


def test_overlapping_calls_share_what_the_replica_burns_and_idle_time_is_not_charged():
    clocks = FakeClocks()
    meter = UsageMeter(gpus=2.0, cpu_clock=lambda: clocks.cpu, wall_clock=lambda: clocks.wall)
    clocks.spend(cpu_s=5.0, wall_s=50.0)  # idle before any call: nobody pays
    first = meter.start()
    clocks.spend(cpu_s=1.0, wall_s=1.0)  # first alone
    second = meter.start()
    clocks.spend(cpu_s=4.0, wall_s=2.0)  # both in flight: half each
    first_usage = first.stop()
    clocks.spend(cpu_s=0.5, wall_s=0.5)  # second alone

    assert first_usage == pytest.approx({"cpu_s": 1.0 + 2.0, "gpu_s": 2.0 * (1.0 + 1.0)})
    assert second.stop() == pytest.approx({"cpu_s": 2.0 + 0.5, "gpu_s": 2.0 * (1.0 + 0.5)})
    assert first.stop() is first_usage  # stopping twice charges once
    third = meter.start()  # after idle time the shares restart
    clocks.spend(cpu_s=0.25, wall_s=1.0)
    assert third.stop() == pytest.approx({"cpu_s": 0.25, "gpu_s": 2.0})


def test_measured_seconds_add_to_seconds_a_result_already_declares():
    declared = Result(output={}, usage={"cpu_s": 1.0, "input_tokens": 7})

    [answer] = charged_evenly([declared], {"cpu_s": 0.5})

    assert answer.usage == {"cpu_s": 1.5, "input_tokens": 7}
    assert declared.usage == {"cpu_s": 1.0, "input_tokens": 7}  # the original is left alone


def test_concurrent_invocations_of_a_batchable_agent_share_batches_and_keep_their_answers(monkeypatch):
    agent = agent_with(CpuBurnerDouble, monkeypatch, burn_s=0.01)
    sizes = []
    predict = agent.specialist.predict
    monkeypatch.setattr(agent.specialist, "predict", lambda texts, options: sizes.append(len(texts)) or predict(texts, options))

    async def main():
        return await asyncio.gather(*(agent.invoke(Invocation(text=f"t{i}")) for i in range(9)))

    answers = asyncio.run(main())

    assert [answer.output["text"] for answer in answers] == [f"t{i}" for i in range(9)]
    assert sum(sizes) == 9 and sizes[0] == 8 and len(sizes) == 2  # max_batch_size 8, then the one left
