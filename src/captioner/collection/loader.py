"""Batches prepared ahead in worker processes, in order, with a bounded number in flight: the
images of the next batches are decoded while the model captions this one (no torch needed)."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, Generic, TypeVar

Result = TypeVar("Result")
# Batches handed to each worker ahead of the one being captioned.
BATCHES_AHEAD = 2

_load: Callable | None = None  # in a worker: what its batches run


def _install(load: Callable) -> None:
    global _load
    _load = load


def _run(indices: list[int]) -> Any:
    assert _load is not None
    return _load(indices)


class BatchLoader(Generic[Result]):
    """`load(indices)` for consecutive batches of range(count), in order. With `workers` > 0
    they run in that many processes, at most `BATCHES_AHEAD` batches each ahead of the reader,
    so memory stays bounded however large the collection; `start_method` "forkserver" or "spawn"
    starts them fresh instead of forking a process that runs threads."""

    def __init__(
        self,
        load: Callable[[list[int]], Result],
        count: int,
        batch_size: int,
        workers: int,
        start_method: str | None = None,
    ):
        self.load, self.workers, self.start_method = load, workers, start_method
        self.batches = [
            list(range(start, min(start + batch_size, count)))
            for start in range(0, count, batch_size)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Result]:
        if not self.workers or not self.batches:
            yield from (self.load(batch) for batch in self.batches)
            return
        context = multiprocessing.get_context(self.start_method)
        workers = min(self.workers, len(self.batches))
        with context.Pool(workers, initializer=_install, initargs=(self.load,)) as pool:
            waiting = iter(self.batches)
            pending = deque(
                pool.apply_async(_run, (batch,))
                for batch in islice(waiting, BATCHES_AHEAD * workers)
            )
            while pending:
                result = pending.popleft().get()
                following = next(waiting, None)
                if following is not None:
                    pending.append(pool.apply_async(_run, (following,)))
                yield result
