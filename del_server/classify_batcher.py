"""Classification requests batched: one encoder forward for every request that queued.

Requests queue on the event loop; a single worker takes everything waiting (up to
`max_batch`), runs one forward pass in a thread (the event loop keeps serving streams) and
answers each request. While it runs, new requests queue for the next pass, so a busy server
makes fewer, larger batches. A request whose client left before its pass is dropped from it.
"""

from __future__ import annotations

import asyncio
from collections import deque

import torch

from .classification import EncoderClassifier, EncoderInput


class ClassifyBatcher:
    def __init__(self, classifier: EncoderClassifier, *, max_batch: int) -> None:
        self.classifier = classifier
        self.max_batch = max_batch
        self.running = 0  # rows in the forward pass now
        self._pending: deque[tuple[EncoderInput, asyncio.Future]] = deque()
        self._worker: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def classify(self, item: EncoderInput) -> list[float]:
        """The probability of each label for one prompt."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await future

    async def _work(self) -> None:
        while self._pending:
            batch = []
            while self._pending and len(batch) < self.max_batch:
                item, future = self._pending.popleft()
                if not future.done():  # cancelled: its client left
                    batch.append((item, future))
            if not batch:
                continue
            self.running = len(batch)
            try:
                probabilities = await asyncio.to_thread(self._forward, [i for i, _ in batch])
            except Exception as exc:  # every request of the pass fails with it, none is lost
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), row in zip(batch, probabilities, strict=True):
                    if not future.done():
                        future.set_result(row)
            finally:
                self.running = 0

    def _forward(self, items: list[EncoderInput]) -> list[list[float]]:
        with torch.inference_mode():
            logits = self.classifier.logits(items)
        return torch.softmax(logits.double(), dim=-1).tolist()
