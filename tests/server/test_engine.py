"""The engine: a request that cannot join the running batch fails alone, and the engine runs on.

The fault is injected into the real backend's batch (the way running out of memory while the
batch grows would show), so everything else is the real model and the real scheduler.
"""

from __future__ import annotations

import asyncio

import pytest

from del_client.sampling import Sampling
from del_server.backends.transformers import TransformersBackend
from del_server.generation import Engine, FailedEvent, FinishEvent, TokenEvent
from del_server.models import load_model


class RefusesOneJoin:
    """The real backend, whose batch refuses the `refused`-th join (or each join in a set)."""

    def __init__(self, backend: TransformersBackend, refused: int | set[int]) -> None:
        self._backend, self._joins = backend, 0
        self._refused = {refused} if isinstance(refused, int) else refused
        self.hidden_size = backend.hidden_size
        self.embed, self.prefill = backend.embed, backend.prefill
        self.prefill_many = backend.prefill_many

    def new_batch(self):
        batch = self._backend.new_batch()
        add = batch.add

        def refusing_add(state) -> None:
            self._joins += 1
            if self._joins in self._refused:
                raise MemoryError("no room for another row")
            add(state)

        batch.add = refusing_add
        return batch


@pytest.fixture(scope="module")
def stories(stories260k):
    return load_model(str(stories260k))


async def outcome(handle) -> tuple[int, FinishEvent | FailedEvent]:
    """Tokens received, and the event that ended the request (within 60 s: no hanging test)."""
    tokens = 0
    async with asyncio.timeout(60):
        while not isinstance(event := await handle.events.get(), FinishEvent | FailedEvent):
            tokens += isinstance(event, TokenEvent) and event.token_id is not None
    return tokens, event


def test_a_request_that_cannot_join_the_batch_fails_alone(stories):
    backend = RefusesOneJoin(TransformersBackend(stories.model), refused=2)
    engine = Engine(
        backend, stories.tokenizer, eos_id=None, anchor_id=3, max_running=4, max_waiting=4
    )
    inputs = backend.embed([stories.bos_id, 403, 261])

    async def run():
        engine.start()
        try:
            running = engine.submit("running", inputs, Sampling(max_new_tokens=48, temperature=0))
            await running.events.get()  # it is in the batch before the next one arrives
            refused = engine.submit("refused", inputs, Sampling(max_new_tokens=8, temperature=0))
            results = await asyncio.gather(outcome(running), outcome(refused))
            later = engine.submit("later", inputs, Sampling(max_new_tokens=4, temperature=0))
            return [*results, await outcome(later)]
        finally:
            await asyncio.to_thread(engine.stop)

    (running, finished), (refused_tokens, failed), (_, later) = asyncio.run(run())
    assert isinstance(finished, FinishEvent)
    assert running + 1 == finished.generated_tokens == 48  # its first token was read above
    assert isinstance(failed, FailedEvent)
    assert isinstance(failed.error, MemoryError)
    assert refused_tokens == 0
    assert isinstance(later, FinishEvent)
    assert later.generated_tokens == 4
    assert engine.running == 0


def test_requests_that_join_together_share_a_prefill_and_only_the_refused_one_fails(stories):
    """Three requests join in one round: one prefill for all three, whose joint join the batch
    refuses; each then joins alone, and only the one the batch refuses again fails."""
    backend = RefusesOneJoin(TransformersBackend(stories.model), refused={1, 4})
    engine = Engine(
        backend, stories.tokenizer, eos_id=None, anchor_id=3, max_running=4, max_waiting=4
    )
    prompts = [[stories.bos_id, 403, 261], [stories.bos_id, 403, 407, 261, 378], [stories.bos_id]]

    async def run():
        handles = [
            engine.submit(f"r{i}", backend.embed(p), Sampling(max_new_tokens=6, temperature=0))
            for i, p in enumerate(prompts)
        ]
        engine.start()  # after all three are queued: they join in its first round
        try:
            return await asyncio.gather(*(outcome(h) for h in handles))
        finally:
            await asyncio.to_thread(engine.stop)

    results = asyncio.run(run())
    assert [type(end) for _, end in results] == [FinishEvent, FinishEvent, FailedEvent]
    assert [tokens for tokens, _ in results] == [6, 6, 0]
    assert backend._joins == 4


def test_a_stream_interval_groups_tokens_but_not_first_tokens_or_ends(stories):
    """With a long stream interval a request's first token still comes at once, its other
    tokens come held together, and its end comes as soon as it is made; the tokens are the
    ones it gets without the interval."""
    backend = TransformersBackend(stories.model)
    inputs = backend.embed([stories.bos_id, 403, 407, 261, 378])

    def deliveries(interval_s: float) -> list[list]:
        engine = Engine(
            backend,
            stories.tokenizer,
            eos_id=None,
            anchor_id=3,
            max_running=4,
            max_waiting=4,
            stream_interval_s=interval_s,
        )

        async def run():
            engine.start()
            try:
                handle = engine.submit("r", inputs, Sampling(max_new_tokens=12, temperature=0))
                batches, done = [], False
                async with asyncio.timeout(60):
                    while not done:
                        batch = [await handle.events.get()]
                        while not handle.events.empty():
                            batch.append(handle.events.get_nowait())
                        done = isinstance(batch[-1], FinishEvent)
                        batches.append(batch)
                return batches
            finally:
                await asyncio.to_thread(engine.stop)

        return asyncio.run(run())

    every = deliveries(0.0)
    held = deliveries(3600.0)
    ids = lambda batches: [e.token_id for b in batches for e in b if isinstance(e, TokenEvent)]  # noqa: E731
    assert ids(held) == ids(every)
    assert len(ids(every)) == 12
    assert [len(b) for b in held] == [1, 12]  # the first token, then the rest with the end
    assert isinstance(held[-1][-1], FinishEvent)


def test_requests_that_arrive_while_others_decode_wait_to_share_one_prefill(stories):
    """With a join wait longer than the test, requests arriving while one decodes are
    prefilled together once nothing else runs (an idle engine prefills at once)."""
    backend = TransformersBackend(stories.model)
    sizes = []
    prefill_many = backend.prefill_many

    def recording(inputs):
        sizes.append(len(inputs))
        return prefill_many(inputs)

    backend.prefill_many = recording
    engine = Engine(
        backend,
        stories.tokenizer,
        eos_id=None,
        anchor_id=3,
        max_running=4,
        max_waiting=4,
        join_wait_s=3600.0,
    )
    inputs = backend.embed([stories.bos_id, 403, 407, 261, 378])

    async def run():
        engine.start()
        try:
            first = engine.submit("first", inputs, Sampling(max_new_tokens=16, temperature=0))
            await first.events.get()  # it is decoding
            later = [
                engine.submit(f"later{i}", inputs, Sampling(max_new_tokens=4, temperature=0))
                for i in range(2)
            ]
            return await asyncio.gather(outcome(first), *(outcome(h) for h in later))
        finally:
            await asyncio.to_thread(engine.stop)

    results = asyncio.run(run())
    assert [tokens for tokens, _ in results] == [15, 4, 4]
    assert all(isinstance(end, FinishEvent) for _, end in results)
    assert sizes == [1, 2]
