"""Test doubles for agents: in-process dispatcher Targets that answer at once, stream words,
or fail as told. They stand in for Serve handles in tests of the dispatcher and the ingress."""

from __future__ import annotations

import asyncio

from actors.invocation import Chunk, Failure, Invocation, Result, drain
from cluster.errors import BatonError, RateLimited


class EchoTarget:
    """Test double for an agent version: answers {"text", "by"} at once, or fails as told."""

    streams = False

    def __init__(self, name: str, fail: BatonError | None = None, delay_s: float = 0.0):
        self.name, self.fail, self.delay_s = name, fail, delay_s
        self.seen: list[Invocation] = []

    async def call(self, invocation: Invocation):
        self.seen.append(invocation)
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            return Failure(self.fail)
        return Result(output={"text": invocation.input_text, "by": self.name}, label=self.name, score=1.0)

    async def stream(self, invocation):
        yield await self.call(invocation)


class StreamingTarget:
    """Test double for a streaming agent: yields the words of its text as chunks, then the
    Result; ``fail_after`` chunks it ends with a Failure instead."""

    streams = True

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after

    async def call(self, invocation):
        return drain([item async for item in self.stream(invocation)])

    async def stream(self, invocation):
        words = invocation.input_text.split()
        for index, word in enumerate(words):
            if self.fail_after is not None and index == self.fail_after:
                yield Failure(RateLimited("provider throttled", retry_after_s=7))
                return
            yield Chunk(word + " ")
        yield Result(output={"text": " ".join(words)}, usage={"input_tokens": 3, "output_tokens": len(words)})
