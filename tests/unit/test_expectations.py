"""Pod creates expected until the watch shows them (client-go's ControllerExpectations)."""

from llmjob_operator.expectations import CreateExpectations

JOB = ("team-a", "job-a")


def nothing_cached(pod: str) -> bool:
    return False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_sent_create_holds_the_job_until_its_event_is_seen() -> None:
    expected = CreateExpectations()
    assert not expected.pending(JOB, nothing_cached)
    expected.expect(JOB, "job-a-worker-0")
    expected.expect(JOB, "job-a-worker-1")
    expected.observed(JOB, "job-a-worker-0")
    assert expected.pending(JOB, nothing_cached)
    expected.observed(JOB, "job-a-worker-1")
    assert not expected.pending(JOB, nothing_cached)


def test_a_pod_the_cache_holds_counts_as_seen() -> None:
    """A relist, or a create that found the pod there, put it in the cache without an event."""
    expected = CreateExpectations()
    expected.expect(JOB, "job-a-worker-0")
    expected.expect(JOB, "job-a-worker-1")
    assert expected.pending(JOB, lambda pod: pod == "job-a-worker-0")
    assert not expected.pending(JOB, lambda pod: pod == "job-a-worker-1")


def test_other_jobs_and_other_pods_do_not_meet_an_expectation() -> None:
    expected = CreateExpectations()
    expected.expect(JOB, "job-a-worker-0")
    expected.observed(("team-b", "job-a"), "job-a-worker-0")
    expected.observed(JOB, "job-a-worker-1")
    assert expected.pending(JOB, nothing_cached)
    assert not expected.pending(("team-b", "job-a"), nothing_cached)


def test_an_expectation_no_event_meets_lapses_after_the_ttl() -> None:
    clock = Clock()
    expected = CreateExpectations(ttl_seconds=300.0, clock=clock)
    expected.expect(JOB, "job-a-worker-0")
    clock.now += 299.0
    assert expected.pending(JOB, nothing_cached)
    clock.now += 1.0
    assert not expected.pending(JOB, nothing_cached)


def test_a_deleted_job_waits_for_nothing() -> None:
    expected = CreateExpectations()
    expected.expect(JOB, "job-a-worker-0")
    expected.forget(JOB)
    assert not expected.pending(JOB, nothing_cached)
