"""Values a stream needs that cost a thread to compute (an exact ε, a symbol model): computed
once per key, off the event loop that serves every stream, and shared."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)
ValueT = TypeVar("ValueT")


class ThreadMemo(Generic[KeyT, ValueT]):
    """`compute(key)` run in a thread once per key and kept (at most `size` keys, then all
    forgotten at once); streams that want a key while it is computed wait for that run, and a
    key already known costs no thread hop. A failed run is not kept."""

    def __init__(self, compute: Callable[[KeyT], ValueT], size: int) -> None:
        self._compute = compute
        self._size = size
        self._runs: dict[KeyT, asyncio.Future[ValueT]] = {}

    async def get(self, key: KeyT) -> ValueT:
        if (run := self._runs.get(key)) is None:
            if len(self._runs) >= self._size:
                self._runs.clear()
            run = self._runs[key] = asyncio.ensure_future(asyncio.to_thread(self._compute, key))
        try:
            return await asyncio.shield(run)
        except BaseException:
            if run.done() and self._runs.get(key) is run:
                del self._runs[key]
            raise
