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


# Batches: [0], [1, 2], [3, 4, 5, 6], [7]. A refused create's batch finishes; no later one is sent.
@pytest.mark.parametrize(("refused", "sent"), [(4, [0, 1, 2, 3, 4, 5, 6]), (0, [0])])
def test_a_refused_create_ends_its_batch_and_no_later_one_is_sent(
    refused: int, sent: list[int]
) -> None:
    ran: list[int] = []
    lock = threading.Lock()
    calls = [recorder(ran, lock, i, fails=i == refused) for i in range(8)]
    refusal = f"create {refused} refused"
    with ThreadPoolExecutor(4) as pool, pytest.raises(RuntimeError, match=refusal):
        slow_start(pool, calls)
    assert sorted(ran) == sent
