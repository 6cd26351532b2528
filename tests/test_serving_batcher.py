"""The micro-batcher alone, with a fake model: batches, keys, the bounded queue, deadlines, and the
prepare pool. The fake model blocks until released, so no outcome depends on timing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from captioner.serving.batcher import DeadlineExceededError, MicroBatcher, QueueFullError


class FakeModel:
    """Records each batch; every call waits for `release` once `hold` is set."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.hold = False
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, key: str, items: list[int]) -> list[int]:
        self.batches.append((key, items))
        self.running.set()
        if self.hold:
            assert self.release.wait(30)
        if any(item < 0 for item in items):
            raise RuntimeError("the model failed")
        return [item * 10 for item in items]


def batcher_for(model: FakeModel, **options) -> MicroBatcher:
    settings = {"max_batch_size": 4, "max_wait_s": 0.0, "max_queue": 16, "prepare_workers": 2}
    return MicroBatcher(model, **{**settings, **options})


def run(test: Callable[[MicroBatcher], Awaitable[None]], batcher: MicroBatcher) -> None:
    async def main() -> None:
        batcher.start()
        try:
            await test(batcher)
        finally:
            await batcher.stop()

    asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop and the threads work until `condition` holds."""
    while not condition():
        await asyncio.sleep(0.001)


def value(item: int) -> Callable[[], int]:
    return lambda: item


async def first_batch_running(batcher: MicroBatcher, model: FakeModel) -> asyncio.Task:
    model.hold = True
    first = asyncio.create_task(batcher.submit(value(1), "greedy"))
    await asyncio.get_running_loop().run_in_executor(None, model.running.wait)
    return first


async def queued_behind_a_running_batch(
    batcher: MicroBatcher, model: FakeModel, keys: dict[int, str]
) -> list[asyncio.Task]:
    """Item 1 running in the model, then `keys` (item: key) queued; then the model is released."""
    first = await first_batch_running(batcher, model)
    others = [asyncio.create_task(batcher.submit(value(i), key)) for i, key in keys.items()]
    await until(lambda: batcher.queued == len(keys))
    model.release.set()
    return [first, *others]


def test_requests_queued_behind_a_batch_run_together() -> None:
    model = FakeModel()

    async def test(batcher: MicroBatcher) -> None:
        tasks = await queued_behind_a_running_batch(
            batcher, model, dict.fromkeys((2, 3, 4), "greedy")
        )
        outcomes = [await task for task in tasks]
        assert [outcome.result for outcome in outcomes] == [10, 20, 30, 40]
        assert [outcome.stats.size for outcome in outcomes] == [1, 3, 3, 3]
        assert [outcome.item for outcome in outcomes] == [1, 2, 3, 4]

    run(test, batcher_for(model))
    assert model.batches == [("greedy", [1]), ("greedy", [2, 3, 4])]


def test_only_requests_with_equal_keys_share_a_call() -> None:
    model = FakeModel()

    async def test(batcher: MicroBatcher) -> None:
        keys = {2: "greedy", 3: "beam", 4: "greedy"}
        await asyncio.gather(*await queued_behind_a_running_batch(batcher, model, keys))

    run(test, batcher_for(model))
    assert model.batches == [("greedy", [1]), ("greedy", [2, 4]), ("beam", [3])]


@pytest.mark.parametrize(("max_batch_size", "sizes"), [(2, [2, 1]), (1, [1, 1, 1])])
def test_batches_are_at_most_max_batch_size(max_batch_size: int, sizes: list[int]) -> None:
    model = FakeModel()

    async def test(batcher: MicroBatcher) -> None:
        keys = dict.fromkeys((2, 3, 4), "greedy")
        await asyncio.gather(*await queued_behind_a_running_batch(batcher, model, keys))

    run(test, batcher_for(model, max_batch_size=max_batch_size))
    assert [len(items) for _, items in model.batches[1:]] == sizes


def test_a_full_queue_refuses_at_once_and_accepts_again_once_drained() -> None:
    model = FakeModel()

    async def test(batcher: MicroBatcher) -> None:
        first = await first_batch_running(batcher, model)  # in the model: not waiting
        waiting = [asyncio.create_task(batcher.submit(value(i), "greedy")) for i in (2, 3)]
        await asyncio.sleep(0)  # both have entered the queue
        with pytest.raises(QueueFullError, match="2 requests are already waiting"):
            await batcher.submit(value(4), "greedy")
        model.release.set()
        await asyncio.gather(first, *waiting)
        assert batcher.waiting == 0
        assert (await batcher.submit(value(5), "greedy")).result == 50

    run(test, batcher_for(model, max_queue=2))


def test_a_request_past_its_deadline_is_dropped_before_the_model_sees_it() -> None:
    model = FakeModel()

    async def test(batcher: MicroBatcher) -> None:
        first = await first_batch_running(batcher, model)
        with pytest.raises(DeadlineExceededError, match="no answer within 0.05 s"):
            await batcher.submit(value(2), "greedy", timeout_s=0.05)  # the model is held
        assert batcher.waiting == 0  # its place in the queue is free again
        model.release.set()
        await first
        assert (await batcher.submit(value(3), "greedy")).result == 30

    run(test, batcher_for(model))
    assert model.batches == [("greedy", [1]), ("greedy", [3])]


def test_a_slow_preparation_does_not_hold_up_the_others() -> None:
    """Decoding runs on the prepare pool, beside the model: a slow upload delays only itself."""
    model = FakeModel()
    slow_started, slow_release = threading.Event(), threading.Event()

    def slow() -> int:
        slow_started.set()
        assert slow_release.wait(30)
        return 1

    async def test(batcher: MicroBatcher) -> None:
        slow_task = asyncio.create_task(batcher.submit(slow, "greedy"))
        await asyncio.get_running_loop().run_in_executor(None, slow_started.wait)
        assert (await batcher.submit(value(2), "greedy")).result == 20
        slow_release.set()
        assert (await slow_task).result == 10

    run(test, batcher_for(model))
    assert model.batches == [("greedy", [2]), ("greedy", [1])]


def test_errors_reach_the_requests_they_belong_to() -> None:
    model = FakeModel()

    def unreadable() -> int:
        raise ValueError("not an image")

    async def test(batcher: MicroBatcher) -> None:
        with pytest.raises(ValueError, match="not an image"):
            await batcher.submit(unreadable, "greedy")
        first, *failing = await queued_behind_a_running_batch(
            batcher, model, dict.fromkeys((-2, 3), "greedy")
        )
        await first
        for task in failing:  # the whole batch failed
            with pytest.raises(RuntimeError, match="the model failed"):
                await task
        assert batcher.waiting == 0
        assert (await batcher.submit(value(4), "greedy")).result == 40  # and the worker lives on

    run(test, batcher_for(model))
