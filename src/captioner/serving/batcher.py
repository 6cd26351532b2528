"""Micro-batching with backpressure, free of any web framework (and of torch).

Each request's input is prepared (decoded, preprocessed) on a small thread pool, then queued for
the one model thread. While the model works on one batch, prepared inputs queue up and go
together into the next call, so throughput grows with load instead of each request waiting for
all the ones before it. A slow input delays only itself: it is prepared beside the model, not on
its thread. The queue is bounded (`QueueFullError`) and each request may carry a deadline
(`DeadlineExceededError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar, cast

log = logging.getLogger(__name__)

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")
Result = TypeVar("Result")


class QueueFullError(Exception):
    """As many requests are waiting as the queue holds: the caller should retry later."""


class DeadlineExceededError(Exception):
    """The request was not answered within its deadline."""


@dataclass(frozen=True)
class BatchStats:
    """How one request went: the batch it ran in and where its time went, in seconds."""

    size: int
    prepare_s: float
    queue_s: float
    inference_s: float


@dataclass(frozen=True)
class Outcome(Generic[Item, Result]):
    item: Item  # what `prepare` made
    result: Result
    stats: BatchStats


@dataclass(eq=False)
class _Job:
    key: Hashable
    future: asyncio.Future
    submitted_at: float = field(default_factory=time.perf_counter)
    item: Any = None
    prepared_at: float = 0.0


class MicroBatcher(Generic[Key, Item, Result]):
    """`run_batch(key, items)` returns one result per item; it runs on one worker thread with the
    items of jobs submitted under equal keys, at most `max_batch_size` at once, after waiting at
    most `max_wait_s` for a batch to fill (`max_batch_size=1` turns batching off).

    At most `max_queue` jobs may be preparing or waiting for the model; `submit` refuses more.
    """

    def __init__(
        self,
        run_batch: Callable[[Key, list[Item]], list[Result]],
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        prepare_workers: int,
    ):
        self.run_batch = run_batch
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max_wait_s if self.max_batch_size > 1 else 0.0
        self.max_queue = max_queue
        self._waiting: set[_Job] = set()  # submitted, not yet in a batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._prepare_pool = ThreadPoolExecutor(prepare_workers, "captioner-prepare")
        self._model_thread = ThreadPoolExecutor(1, "captioner-model")
        self._worker: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        """Jobs preparing or queued for the model."""
        return len(self._waiting)

    @property
    def queued(self) -> int:
        """Jobs prepared and waiting for the model."""
        return 0 if self._queue is None else self._queue.qsize()

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self, prepare: Callable[[], Item], key: Key, timeout_s: float | None = None
    ) -> Outcome[Item, Result]:
        """Prepare an item off the event loop, then run it in a batch with others under `key`.
        Raises QueueFullError at once when the queue is full, DeadlineExceededError after
        `timeout_s`, and whatever `prepare` or `run_batch` raised."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if len(self._waiting) >= self.max_queue:
            raise QueueFullError(f"{len(self._waiting)} requests are already waiting")
        job = _Job(key, asyncio.get_running_loop().create_future())
        self._waiting.add(job)
        try:
            return await asyncio.wait_for(self._prepare_and_wait(job, prepare), timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceededError(f"no answer within {timeout_s:g} s") from None
        finally:
            self._waiting.discard(job)

    async def _prepare_and_wait(self, job: _Job, prepare: Callable[[], Item]) -> Outcome:
        loop = asyncio.get_running_loop()
        job.item = await loop.run_in_executor(self._prepare_pool, prepare)
        job.prepared_at = time.perf_counter()
        assert self._queue is not None  # started: submit checked
        self._queue.put_nowait(job)
        result, stats = await job.future
        return Outcome(job.item, result, stats)

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            groups: dict[Hashable, list[_Job]] = defaultdict(list)
            for job in jobs:
                if not job.future.done():  # its deadline passed or its client left while queued
                    groups[job.key].append(job)
            for key, group in groups.items():
                await self._run_group(key, group)

    async def _collect(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        assert self._queue is not None  # the worker runs only once started
        jobs = [await self._take()]
        deadline = loop.time() + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            if not self._queue.empty():
                jobs.append(await self._take())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._take(), remaining))
            except asyncio.TimeoutError:
                break
        return jobs

    async def _take(self) -> _Job:
        assert self._queue is not None  # the worker runs only once started
        job = await self._queue.get()
        self._waiting.discard(job)
        return job

    async def _run_group(self, key: Hashable, group: list[_Job]) -> None:
        started = time.perf_counter()
        call = partial(self.run_batch, cast(Key, key), [job.item for job in group])
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._model_thread, call)
        except Exception as error:
            log.exception("a batch of %d failed", len(group))
            for job in group:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        inference_s = time.perf_counter() - started
        for job, result in zip(group, results):
            if not job.future.done():
                stats = BatchStats(
                    len(group),
                    job.prepared_at - job.submitted_at,
                    started - job.prepared_at,
                    inference_s,
                )
                job.future.set_result((result, stats))
