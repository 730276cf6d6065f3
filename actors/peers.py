"""The agents a specialist calls from its own replica (documents calls ocr), reached through
the same Dispatcher as every other call. Blocking, because specialist code runs on a
worker thread; the calls themselves run concurrently on the replica's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from actors.dispatcher import Called, Dispatcher
from actors.invocation import Invocation


class Peers:
    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the calls run on: the replica's, where its handles live."""
        self._loop = loop

    def __contains__(self, agent: str) -> bool:
        return self.dispatcher.knows(agent)

    def invoke_all(self, calls: Sequence[tuple[str, Invocation]]) -> list[Called]:
        """Every call at once; one Called per call, in order. Errors come back inside them."""
        gathered = self._gather(calls)
        if self._loop is None:
            return asyncio.run(gathered)
        return asyncio.run_coroutine_threadsafe(gathered, self._loop).result()

    async def _gather(self, calls: Sequence[tuple[str, Invocation]]) -> list[Called]:
        return list(await asyncio.gather(*(self.dispatcher.invoke(agent, invocation) for agent, invocation in calls)))
