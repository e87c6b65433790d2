"""The leader election's pure rules (client-go's semantics), with injected clocks."""

import pytest

from llmjob_operator.leader import (
    ElectionSettings,
    LeaseRecord,
    NotLeaderError,
    Observation,
    Term,
    claim,
    held_by_another,
    observe,
    released,
    term_holds,
    write_window,
)

A = ElectionSettings(identity="a_1", lease_name="l", lease_namespace="ns")
B = ElectionSettings(identity="b_2", lease_name="l", lease_namespace="ns")


def test_settings_follow_client_gos_checks() -> None:
    assert (A.lease_duration_seconds, A.renew_deadline_seconds, A.retry_period_seconds) == (
        15.0,
        10.0,
        2.0,
    )
    with pytest.raises(ValueError, match="longer than the renew deadline"):
        ElectionSettings("a", "l", "ns", lease_duration_seconds=10, renew_deadline_seconds=10)
    with pytest.raises(ValueError, match=r"1\.2 times the retry period"):
        ElectionSettings("a", "l", "ns", renew_deadline_seconds=2.4, retry_period_seconds=2)


def test_a_missing_lease_is_claimed_with_no_transition() -> None:
    record = claim(None, A, "t0")
    assert record == LeaseRecord("a_1", 15, "t0", "t0", 0)
    assert LeaseRecord.from_spec(record.to_spec()) == record


def test_a_renew_keeps_the_acquire_time_and_the_transitions() -> None:
    held = LeaseRecord("a_1", 15, "t0", "t0", 3)
    assert claim(held, A, "t9") == LeaseRecord("a_1", 15, "t0", "t9", 3)


def test_taking_anothers_lease_counts_a_transition() -> None:
    theirs = LeaseRecord("b_2", 15, "t0", "t5", 3)
    assert claim(theirs, A, "t9") == LeaseRecord("a_1", 15, "t9", "t9", 4)


def test_the_observed_time_starts_when_the_record_changes_never_from_its_times() -> None:
    theirs = LeaseRecord("b_2", 15, "2020-01-01T00:00:00.000000Z", "2020-01-01T00:00:00Z", 0)
    # Its renewTime is years old by our wall clock: irrelevant, only our own clock counts.
    seen = observe(None, theirs, now=100.0)
    assert held_by_another(seen, A.identity, now=100.0)
    # Unchanged polls keep the first observation.
    for now in (102.0, 104.0, 114.9):
        seen = observe(seen, theirs, now)
        assert seen.observed_at == 100.0
        assert held_by_another(seen, A.identity, now)
    assert not held_by_another(seen, A.identity, now=115.0)
    # A renew by the holder restarts the clock.
    renewed = LeaseRecord("b_2", 15, theirs.acquire_time, "2020-01-01T00:00:02Z", 0)
    seen = observe(seen, renewed, now=116.0)
    assert seen.observed_at == 116.0
    assert held_by_another(seen, A.identity, now=130.0)


def test_a_released_lease_is_taken_at_once_and_ones_own_is_never_held_against_one() -> None:
    theirs = LeaseRecord("b_2", 15, "t0", "t5", 2)
    gone = released(theirs, "t6")
    assert gone == LeaseRecord("", 1, "t6", "t6", 2)
    assert not held_by_another(Observation(gone, 100.0), A.identity, now=100.0)
    mine = Observation(LeaseRecord("a_1", 15, "t0", "t5", 0), 100.0)
    assert not held_by_another(mine, A.identity, now=100.0)


def test_writes_stop_at_the_renew_deadline_and_never_outlive_the_lease() -> None:
    term = Term(number=1, renewed_at=50.0)
    assert write_window(term, A, now=50.0) == 15.0
    assert write_window(term, A, now=59.5) == 5.5
    assert term_holds(term, A, now=59.99)
    assert not term_holds(term, A, now=60.0)
    with pytest.raises(NotLeaderError):
        write_window(term, A, now=60.0)


def test_no_write_of_a_silent_leader_can_reach_the_time_a_standby_takes_over() -> None:
    """The safety property, over leader renews that stop at any moment and standby polls at
    any phase: the leader's last write ends (sent + its cut time-out) no later than the first
    moment the standby may act, with the margin leaseDuration - renewDeadline for sends."""
    for renewed_at in (0.0, 0.3, 7.9):
        term = Term(1, renewed_at)
        record = LeaseRecord("a_1", 15, "t0", f"t{renewed_at}", 0)
        # The standby sees the record at its first poll after the renew was written.
        for delay in (0.0, 0.01, 1.5, 2.4):
            seen = observe(None, record, renewed_at + delay)
            takeover = next(
                t / 10
                for t in range(int(renewed_at * 10), 1000)
                if not held_by_another(seen, B.identity, t / 10)
            )
            last_send = max(
                t / 100
                for t in range(int(renewed_at * 100), 10_000)
                if term_holds(term, A, t / 100)
            )
            last_write_ends = last_send + write_window(term, A, last_send)
            assert last_write_ends <= takeover
            assert takeover - last_send >= A.lease_duration_seconds - A.renew_deadline_seconds
