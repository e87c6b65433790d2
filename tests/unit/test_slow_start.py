"""controller.slow_start: a plan's pod creates go out 1, 2, 4, ... at a time, and a refused
create stops the rest."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmjob_operator.controller import slow_start


def recorder(
    ran: list[int], lock: threading.Lock, index: int, fails: bool = False
) -> Callable[[], None]:
    def call() -> None:
        with lock:
            ran.append(index)
        if fails:
            raise RuntimeError(f"create {index} refused")

    return call


def test_every_create_runs_once() -> None:
    ran: list[int] = []
    lock = threading.Lock()
    with ThreadPoolExecutor(4) as pool:
        slow_start(pool, [recorder(ran, lock, i) for i in range(8)])
    assert sorted(ran) == list(range(8))


def test_a_refused_create_ends_its_batch_and_no_later_one_is_sent() -> None:
    # Batches: [0], [1, 2], [3, 4, 5, 6], [7]. Create 4 fails: its batch finishes, 7 is never sent.
    ran: list[int] = []
    lock = threading.Lock()
    calls = [recorder(ran, lock, i, fails=i == 4) for i in range(8)]
    with ThreadPoolExecutor(4) as pool, pytest.raises(RuntimeError, match="create 4 refused"):
        slow_start(pool, calls)
    assert sorted(ran) == [0, 1, 2, 3, 4, 5, 6]


def test_when_the_first_create_is_refused_no_other_is_sent() -> None:
    ran: list[int] = []
    lock = threading.Lock()
    calls = [recorder(ran, lock, i, fails=i == 0) for i in range(8)]
    with ThreadPoolExecutor(4) as pool, pytest.raises(RuntimeError, match="create 0 refused"):
        slow_start(pool, calls)
    assert ran == [0]
