"""A gang behind a queue's scheduling gate (Kueue's admission gate) is Queued: a phase and a
condition, no start-up clock running, and one status write per change."""

from typing import Any

from llmjob_operator.observe import QueueVerdict, kueue_verdict, worker_state
from llmjob_operator.reconcile import (
    QUEUE_READ_SECONDS,
    QUEUED_CONDITION,
    DeletePod,
    Plan,
    status_write_due,
)
from llmjob_operator.render import KUEUE_ADMISSION_GATE, JobRef
from tests.unit.test_reconcile import NOW, REF, ago, run, running_status, spec, worker

GATED: dict[str, Any] = {"scheduling_gates": (KUEUE_ADMISSION_GATE,), "started": False}


def queued_condition(result: Plan) -> Any:
    return next(c for c in result.status.conditions if c.type == QUEUED_CONDITION)


def pending(**fields: Any) -> dict[str, Any]:
    return {"phase": "Pending", "attempt": 1, "attemptStartTime": ago(400).isoformat(), **fields}


def test_a_gated_gang_is_queued_and_says_which_gate_holds_it() -> None:
    timeout = spec(failurePolicy={"schedulingTimeoutSeconds": 60, "failOnSchedulingTimeout": True})
    gang = [worker(i, "Pending", **GATED) for i in range(2)]
    result = run(status=pending(), workers=gang, job_spec=timeout)
    assert result.status.phase == "Queued"
    condition = queued_condition(result)
    assert (condition.status, condition.reason) == ("True", "SchedulingGated")
    assert KUEUE_ADMISSION_GATE in condition.message and "2/2 workers" in condition.message
    assert [e.reason for e in result.events] == ["Queued"]
    # Created 300 s ago with a 60 s scheduling timeout: queueing is not being unschedulable.
    assert not any(a for a in result.actions if isinstance(a, DeletePod))
    again = run(status=result.status.model_dump(mode="json", by_alias=True), workers=gang)
    assert again.events == []
    assert status_write_due(result.status, again.status, NOW, 30) is None


def test_admission_lifts_the_queued_condition_and_the_gang_goes_on_starting() -> None:
    gang = [worker(i, "Pending", **GATED) for i in range(2)]
    queued = run(status=pending(), workers=gang).status.model_dump(mode="json", by_alias=True)
    admitted = run(status=queued, workers=[worker(i, "Pending", started=False) for i in range(2)])
    assert admitted.status.phase == "Pending"
    condition = queued_condition(admitted)
    assert (condition.status, condition.reason) == ("False", "Admitted")
    assert condition.last_transition_time == NOW
    assert [e.reason for e in admitted.events] == ["Admitted"]
    running = run(status=queued, workers=[worker(0), worker(1)])
    assert running.status.phase == "Running"
    assert queued_condition(running).status == "False"


def test_the_scheduling_timeout_counts_from_admission_not_from_pod_creation() -> None:
    timeout = spec(failurePolicy={"schedulingTimeoutSeconds": 60, "failOnSchedulingTimeout": True})
    # The pods were made 300 s ago, queued, and admitted 30 s ago: 30 s unschedulable so far.
    unschedulable = [
        worker(i, "Pending", started=False, unschedulable_message="0/2 nodes are available")
        for i in range(2)
    ]
    recently = {
        "type": QUEUED_CONDITION,
        "status": "False",
        "reason": "Admitted",
        "lastTransitionTime": ago(30).isoformat(),
    }
    waiting = run(status=pending(conditions=[recently]), workers=unschedulable, job_spec=timeout)
    assert waiting.status.phase == "Pending"
    assert waiting.requeue_after == 30.0
    long_ago = {**recently, "lastTransitionTime": ago(90).isoformat()}
    failed = run(status=pending(conditions=[long_ago]), workers=unschedulable, job_spec=timeout)
    assert failed.status.phase == "Failed"
    assert next(c for c in failed.status.conditions if c.type == "Failed").reason == "Unschedulable"


def test_an_earlier_attempts_admission_does_not_start_this_attempts_clock() -> None:
    timeout = spec(failurePolicy={"schedulingTimeoutSeconds": 60, "failOnSchedulingTimeout": True})
    unschedulable = [worker(0, "Pending", started=False, unschedulable_message="no nodes")]
    old = {
        "type": QUEUED_CONDITION,
        "status": "False",
        "reason": "Admitted",
        "lastTransitionTime": ago(500).isoformat(),
    }
    # attempt 1 started 400 s ago, after that admission: the pod's own age (300 s) counts.
    failed = run(status=pending(conditions=[old]), workers=unschedulable, job_spec=timeout)
    assert failed.status.phase == "Failed"


def test_suspending_a_queued_job_ends_its_queued_condition() -> None:
    gang = [worker(i, "Pending", **GATED) for i in range(2)]
    queued = run(status=pending(), workers=gang).status.model_dump(mode="json", by_alias=True)
    suspended = run(status=queued, workers=gang, job_spec=spec(runPolicy={"suspend": True}))
    assert suspended.status.phase == "Suspended"
    condition = queued_condition(suspended)
    assert (condition.status, condition.reason) == ("False", "Suspended")
    assert {a.name for a in suspended.actions if isinstance(a, DeletePod)} == {
        "j-worker-0",
        "j-worker-1",
    }


def test_a_gang_kueue_preempts_restarts_uncounted_as_preempted_keeping_its_grace() -> None:
    pod = {
        "metadata": {
            "name": "j-worker-1",
            "uid": "p1",
            "labels": {"training.llmjob.dev/worker-index": "1", "training.llmjob.dev/attempt": "1"},
            "deletionTimestamp": "2026-06-01T12:01:00Z",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {
                    "type": "TerminationTarget",
                    "status": "True",
                    "reason": "WorkloadEvictedDueToPreempted",
                    "message": "Preempted to accommodate a workload (UID: x) due to prioritization",
                }
            ],
            "containerStatuses": [{"name": "trainer", "state": {"running": {}}}],
        },
    }
    evicted = worker_state(pod)
    assert evicted is not None and evicted.disrupted and evicted.deleting
    result = run(status=running_status(), workers=[worker(0), evicted])
    assert result.status.phase == "Restarting"
    assert result.status.last_failure is not None
    assert result.status.last_failure.reason == "Preempted"
    assert (result.status.restarts, result.status.disruptions) == (0, 1)
    # Every rank is healthy: the survivor keeps its own grace to commit a checkpoint.
    (survivor,) = [a for a in result.actions if isinstance(a, DeletePod)]
    assert (survivor.name, survivor.grace_seconds) == ("j-worker-0", None)


def test_time_queued_does_not_count_against_the_active_deadline() -> None:
    deadline = spec(runPolicy={"activeDeadlineSeconds": 300})
    gang = [worker(i, "Pending", **GATED) for i in range(2)]
    # Started 500 s ago and queued since 400 s ago: 100 s active, no wake-up while queued.
    queued_since_400 = {
        "type": QUEUED_CONDITION,
        "status": "True",
        "reason": "SchedulingGated",
        "lastTransitionTime": ago(400).isoformat(),
    }
    waiting = pending(startTime=ago(500).isoformat(), conditions=[queued_since_400])
    queued = run(status=waiting, workers=gang, job_spec=deadline)
    assert queued.status.phase == "Queued"
    assert queued.requeue_after is None
    # Admitted now: the 400 s wait is kept, 200 s of the deadline are left.
    admitted = run(status=waiting, workers=[worker(0), worker(1)], job_spec=deadline)
    assert admitted.status.phase == "Running"
    assert admitted.status.queued_seconds == 400
    assert queued_condition(admitted).status == "False"
    later = admitted.status.model_dump(mode="json", by_alias=True)
    running = run(status=later, workers=[worker(0), worker(1)], job_spec=deadline)
    assert running.status.phase == "Running"
    assert running.requeue_after is not None and running.requeue_after <= 200
    # The same job without the queued time is past its deadline.
    failed = run(status={**later, "queuedSeconds": 0}, workers=[worker(0)], job_spec=deadline)
    assert failed.status.phase == "Failed"
    reason = next(c for c in failed.status.conditions if c.type == "Failed").reason
    assert reason == "DeadlineExceeded"


def test_kueues_reason_for_holding_a_group_is_read_from_its_workload_conditions() -> None:
    def workload(*conditions: dict[str, str]) -> dict[str, Any]:
        return {"status": {"conditions": list(conditions)}}

    full = {
        "type": "QuotaReserved",
        "status": "False",
        "reason": "Pending",
        "message": "couldn't assign flavors to pod set main: insufficient unused quota for "
        "nvidia.com/gpu in flavor default, 2 more needed",
    }
    assert kueue_verdict(workload(full)) == QueueVerdict("Pending", full["message"])
    reserved = {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"}
    checks = {"type": "Admitted", "status": "False", "reason": "NoChecks", "message": "waiting"}
    assert kueue_verdict(workload(reserved, checks)) == QueueVerdict("NoChecks", "waiting")
    admitted = {"type": "Admitted", "status": "True", "reason": "Admitted"}
    assert kueue_verdict(workload(reserved, admitted)) is None
    # Not looked at by Kueue yet: no verdict rather than a made-up one.
    assert kueue_verdict(workload()) is None


def test_a_queued_gang_shows_the_queues_reason_and_looks_again_later() -> None:
    queued_ref = JobRef(name="j", namespace="ns", uid="u", queue_name="team-a")
    gang = [worker(i, "Pending", **GATED) for i in range(2)]
    verdict = QueueVerdict("Pending", "insufficient unused quota for nvidia.com/gpu")
    result = run(status=pending(), workers=gang, ref=queued_ref, queue_verdict=verdict)
    condition = queued_condition(result)
    assert (condition.status, condition.reason) == ("True", "Pending")
    assert "in queue team-a" in condition.message
    assert condition.message.endswith(": insufficient unused quota for nvidia.com/gpu")
    assert result.requeue_after == QUEUE_READ_SECONDS
    # Without a queue label nothing is read again: the gate's lifting wakes the job.
    assert run(status=pending(), workers=gang, ref=REF).requeue_after is None


def test_an_attempt_admitted_before_any_pass_saw_its_gate_is_still_reported_admitted() -> None:
    queued_ref = JobRef(name="j", namespace="ns", uid="u", queue_name="team-a")
    first = {
        "type": QUEUED_CONDITION,
        "status": "False",
        "reason": "Admitted",
        "message": "attempt 1 admitted: no scheduling gate left",
        "lastTransitionTime": ago(500).isoformat(),
    }
    # Attempt 2 started 400 s ago; Kueue ungated its pods before the operator looked.
    second = pending(attempt=2, conditions=[first])
    ungated = [worker(i, "Pending", attempt=2, started=False) for i in range(2)]
    result = run(status=second, workers=ungated, ref=queued_ref)
    condition = queued_condition(result)
    assert (condition.status, condition.reason) == ("False", "Admitted")
    assert condition.message == "attempt 2 admitted: no scheduling gate left"
    assert condition.last_transition_time == ago(500)
    assert result.events == []
    again = run(
        status=result.status.model_dump(mode="json", by_alias=True), workers=ungated, ref=queued_ref
    )
    assert status_write_due(result.status, again.status, NOW, 30) is None
    # A job on no queue keeps what it had.
    unqueued = run(status=second, workers=ungated)
    assert queued_condition(unqueued).message == first["message"]
