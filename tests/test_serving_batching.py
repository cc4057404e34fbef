"""Micro-batching: coalescing, exact splitting, isolation of a bad request, bounded queue."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from mlp.serving.batching import Batcher, Overloaded


def test_concurrent_requests_coalesce_into_one_call_and_split_back() -> None:
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        return x[:, 0] * 10

    async def main() -> list[np.ndarray]:
        b = Batcher(predict, max_batch_size=64)
        return await asyncio.gather(*(b.submit(np.full((1 + i % 3, 2), float(i))) for i in range(20)))

    out = asyncio.run(main())
    assert calls == [sum(1 + i % 3 for i in range(20))]  # one model call for all of them
    for i, o in enumerate(out):
        assert o.tolist() == [i * 10.0] * (1 + i % 3)


def test_max_batch_size_caps_each_call() -> None:
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        return x[:, 0]

    async def main() -> None:
        b = Batcher(predict, max_batch_size=8)
        await asyncio.gather(*(b.submit(np.ones((1, 1))) for _ in range(20)))

    asyncio.run(main())
    assert calls == [8, 8, 4]


def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    def predict(x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise ValueError("negative")
        return x[:, 0]

    async def main() -> list[object]:
        b = Batcher(predict)
        return await asyncio.gather(*(b.submit(np.array([[v]])) for v in (1.0, -1.0, 2.0)), return_exceptions=True)

    ok1, bad, ok2 = asyncio.run(main())
    assert isinstance(bad, ValueError)
    assert np.asarray(ok1).tolist() == [1.0] and np.asarray(ok2).tolist() == [2.0]


@pytest.mark.timeout(30)
def test_bounded_queue_raises_overloaded_instead_of_growing() -> None:
    def slow(x: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return x[:, 0]

    async def main() -> tuple[int, int]:
        b = Batcher(slow, max_batch_size=4, max_queue_rows=8, inline=False)
        results = await asyncio.gather(*(b.submit(np.ones((1, 1))) for _ in range(40)), return_exceptions=True)
        return (sum(isinstance(r, Overloaded) for r in results), sum(isinstance(r, np.ndarray) for r in results))

    overloaded, answered = asyncio.run(main())
    assert overloaded > 0 and answered >= 8 and overloaded + answered == 40


def test_expensive_models_wait_for_company_cheap_ones_do_not() -> None:
    calls: list[int] = []

    def expensive(x: np.ndarray) -> np.ndarray:
        time.sleep(0.01)
        calls.append(x.shape[0])
        return x[:, 0]

    async def main() -> None:
        b = Batcher(expensive, max_batch_size=64, max_latency_ms=200)
        await asyncio.gather(*(b.submit(np.ones((1, 1))) for _ in range(2)))  # learns the cost
        assert b._call_cost > 0.008

        async def later(delay: float) -> np.ndarray:
            await asyncio.sleep(delay)
            return await b.submit(np.ones((1, 1)))

        # a request arriving 1 ms after the first joins its batch: the batcher waited up to
        # the model's cost (10 ms), not the full max_latency_ms (200 ms)
        t0 = time.perf_counter()
        await asyncio.gather(later(0), later(0.001))
        assert time.perf_counter() - t0 < 0.15

    asyncio.run(main())
    assert calls[-1] == 2
