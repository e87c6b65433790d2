"""The node agent's retry delays (llmjob_devcluster.kube.Backoff)."""

from llmjob_devcluster.kube import Backoff


def test_delays_grow_to_the_cap_with_jitter_and_start_over_after_reset() -> None:
    backoff = Backoff(initial=0.5, cap=8.0)
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(8.0, 0.5 * 2**n) for n in range(12)]
    assert all(
        ceiling / 2 <= delay <= ceiling for delay, ceiling in zip(delays, ceilings, strict=True)
    )
    assert max(delays) <= 8.0
    assert min(delays[6:]) >= 4.0  # capped, not reset: the ceiling stays at 8 s
    backoff.reset()
    assert backoff.next_delay() <= 0.5
