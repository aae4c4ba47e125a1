"""Dynamic micro-batching: the queries of concurrent requests share one forward pass.

A request puts its texts on the batcher's queue and awaits their vectors. One worker task takes
the first waiting request, then keeps taking more until ``max_batch`` texts are gathered or
``max_wait_ms`` have passed since the first, encodes them all in one call on a dedicated thread
(the model runs there, the event loop never blocks), and hands each request its rows. The queue
is bounded in texts: beyond ``max_queue`` a request is refused at once (:class:`Overloaded`,
answered 503 with Retry-After) instead of waiting without end.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


class Overloaded(Exception):
    """The queue is full; the caller should retry later."""


@dataclass
class BatchStats:
    """What the batcher did: forward passes and texts encoded (sizes go to ``on_batch``)."""

    batches: int = 0
    texts: int = 0


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    queued_at: float


class MicroBatcher:
    """Gathers texts from concurrent callers into batches for ``encode`` (texts -> vectors)."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be positive, max_wait_ms >= 0")
        self.encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._queued_texts = 0
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tpsearch-encode")
        self._carry: _Pending | None = None

    @property
    def depth(self) -> int:
        """Texts waiting to be encoded."""
        return self._queued_texts

    def start(self) -> None:
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._worker is None:
            return
        while self._queued_texts or self._carry is not None:
            await asyncio.sleep(0.005)
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._worker = None
        self._pool.shutdown(wait=True)

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """The vectors of ``texts`` (rows in order), encoded with other callers' texts."""
        if not texts:
            raise ValueError("no texts to encode")
        if self._queue is None:
            self.start()
        if self._queued_texts + len(texts) > self.max_queue:
            raise Overloaded(f"{self._queued_texts} texts are waiting (limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self._queued_texts += len(texts)
        await self._queue.put(_Pending(list(texts), future, time.perf_counter()))
        return await future

    async def _next(self, timeout: float | None) -> _Pending | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            batch, size = [first], len(first.texts)
            deadline = time.perf_counter() + self.max_wait
            while size < self.max_batch:
                left = deadline - time.perf_counter()
                item = await self._next(max(0.0, left)) if left > 0 else (
                    self._queue.get_nowait() if not self._queue.empty() else None)
                if item is None:
                    break
                if size + len(item.texts) > self.max_batch:
                    self._carry = item  # starts the next batch
                    break
                batch.append(item)
                size += len(item.texts)
            texts = [t for p in batch for t in p.texts]
            started = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(self._pool, self.encode, texts)
                error = None
            except Exception as exc:  # handed to every caller of this batch
                vectors, error = None, exc
            self._queued_texts -= size
            self.stats.batches += 1
            self.stats.texts += size
            if self.on_batch is not None:
                self.on_batch(size, time.perf_counter() - started)
            row = 0
            for p in batch:
                if p.future.done():  # the caller gave up (timeout, disconnect)
                    row += len(p.texts)
                    continue
                if error is not None:
                    p.future.set_exception(error)
                else:
                    p.future.set_result(vectors[row:row + len(p.texts)])
                row += len(p.texts)
