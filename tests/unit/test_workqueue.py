"""The work queue's client-go semantics, with an injected clock."""

from llmjob_operator.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ready_keys(queue: WorkQueue[str]) -> list[str]:
    """Every key ready at the clock's now, each processed once."""
    keys = []
    while (key := queue.get(timeout=0)) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_one_deadline_per_key_the_earliest_wins() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    for seconds in (30, 10, 20, 10, 50):
        queue.add_after("job", seconds)
    assert queue.waiting() == 1
    clock.now += 9.9
    assert ready_keys(queue) == []
    clock.now += 0.2
    assert ready_keys(queue) == ["job"]
    # The later deadlines were never kept: nothing fires at 20, 30 or 50 seconds.
    clock.now += 60
    assert ready_keys(queue) == []


def test_an_add_satisfies_a_pending_deadline() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("job", 5)
    queue.add("job")
    assert ready_keys(queue) == ["job"]
    clock.now += 10
    assert ready_keys(queue) == []


def test_a_key_added_while_active_is_processed_once_more_after() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("job")
    assert queue.get() == "job"
    queue.add("job")
    queue.add("job")
    assert queue.depth() == 0  # never handed to a second worker while active
    queue.done("job")
    assert queue.depth() == 1


def test_error_backoff_is_per_key_exponential_capped_and_forgotten() -> None:
    queue: WorkQueue[str] = WorkQueue(base_backoff_seconds=0.5, max_backoff_seconds=4)
    delays = [queue.add_rate_limited("broken") for _ in range(6)]
    assert delays == [0.5, 1, 2, 4, 4, 4]
    assert queue.add_rate_limited("other") == 0.5
    queue.forget("broken")
    assert queue.add_rate_limited("broken") == 0.5
    assert queue.retries == 8


def test_dropped_key_keeps_no_timer() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("gone", 1)
    queue.drop("gone")
    clock.now += 5
    assert ready_keys(queue) == []
    assert queue.failures("gone") == 0


def test_queue_latency_is_observed_from_ready_to_taken() -> None:
    clock = Clock()
    waited: list[float] = []
    queue: WorkQueue[str] = WorkQueue(clock=clock, observe_latency=waited.append)
    queue.add("a")
    queue.add_after("b", 5)
    clock.now += 2
    assert queue.get(timeout=0) == "a"
    clock.now += 4
    assert queue.get(timeout=0) == "b"
    # "b" was ready only once its deadline passed (at 5 s), taken at 6 s.
    assert waited == [2.0, 1.0]
