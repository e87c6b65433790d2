"""reconcile.plan: tables of observed states -> status and actions, with an injected clock."""

from datetime import UTC, datetime, timedelta
from typing import Any

from llmjob_operator.api import LLMTrainingJobSpec, LLMTrainingJobStatus
from llmjob_operator.observe import Observed, TrainerProgress, WorkerState
from llmjob_operator.reconcile import (
    ApplyObject,
    DeleteJob,
    DeletePod,
    JobView,
    Plan,
    object_key,
    plan,
    plan_invalid,
    with_spec_hash,
)
from llmjob_operator.render import ATTEMPT_LABEL, JobRef, RenderSettings, render
from tests.unit.specs import minimal_spec

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
REF = JobRef(name="j", namespace="ns", uid="u")
SUPPORTING = frozenset({"Service/j", "ConfigMap/j-config", "PersistentVolumeClaim/j-checkpoints"})


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def spec(**overrides: Any) -> LLMTrainingJobSpec:
    base: dict[str, Any] = {
        "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 10, "stallTimeoutSeconds": 60}
    }
    return LLMTrainingJobSpec.model_validate(minimal_spec(**{**base, **overrides}))


def worker(index: int, phase: str = "Running", attempt: int = 1, **fields: Any) -> WorkerState:
    started = fields.pop("started", phase in ("Running", "Succeeded", "Failed"))
    return WorkerState(
        name=f"j-worker-{index}",
        index=index,
        attempt=attempt,
        phase=phase,
        started=started,
        ready=phase == "Running",
        created=ago(300),
        **fields,
    )


def run(
    status: dict[str, Any] | None = None,
    workers: list[WorkerState] | None = None,
    job_spec: LLMTrainingJobSpec | None = None,
    progress: TrainerProgress | None = None,
    supporting: frozenset[str] = SUPPORTING,
) -> Plan:
    the_spec = job_spec or spec()
    view = JobView(
        ref=REF,
        generation=3,
        created=ago(600),
        spec=the_spec,
        status=LLMTrainingJobStatus.model_validate(status or {}),
    )
    settings = RenderSettings(default_image="img")
    desired = render(REF, the_spec, settings, 1)
    hashes = {}
    for body in desired.all:
        hashed = with_spec_hash(body)
        hashes[object_key(body)] = hashed["metadata"]["annotations"][
            "training.llmjob.dev/spec-hash"
        ]
    observed = Observed(
        workers=workers or [],
        applied_hashes={k: v for k, v in hashes.items() if k in supporting},
        progress=progress,
    )
    return plan(view, lambda attempt: render(REF, the_spec, settings, attempt), observed, NOW)


def created_pods(result: Plan) -> list[dict[str, Any]]:
    return [
        a.body for a in result.actions if isinstance(a, ApplyObject) and a.body["kind"] == "Pod"
    ]


def deleted(result: Plan) -> set[str]:
    return {a.name for a in result.actions if isinstance(a, DeletePod)}


def running_status(**fields: Any) -> dict[str, Any]:
    return {
        "phase": "Running",
        "attempt": 1,
        "startTime": ago(500).isoformat(),
        "runningTime": ago(30).isoformat(),
        **fields,
    }


def test_new_job_records_attempt_one_and_creates_the_whole_gang() -> None:
    result = run(supporting=frozenset())
    assert result.status.attempt == 1
    assert result.status.phase == "Pending"
    assert result.status.start_time == NOW
    assert result.status.observed_generation == 3
    kinds = [a.body["kind"] for a in result.actions if isinstance(a, ApplyObject)]
    assert kinds == ["PersistentVolumeClaim", "Service", "ConfigMap", "Pod", "Pod"]
    assert {p["metadata"]["labels"][ATTEMPT_LABEL] for p in created_pods(result)} == {"1"}
    assert any(c.type == "Created" and c.status == "True" for c in result.status.conditions)


def test_supporting_objects_are_reapplied_only_when_missing_or_changed() -> None:
    result = run(
        status={"phase": "Pending", "attempt": 1},
        workers=[worker(0, "Pending"), worker(1, "Pending")],
    )
    assert result.actions == []


def test_all_workers_running_marks_running_and_measures_startup() -> None:
    result = run(status={"phase": "Pending", "attempt": 1}, workers=[worker(0), worker(1)])
    assert result.status.phase == "Running"
    assert result.status.running_time == NOW
    assert result.status.workers.summary == "2/2"
    assert [(t.metric, t.seconds) for t in result.timings] == [("startup", 600.0)]


def test_one_failed_worker_restarts_the_whole_gang_after_backoff() -> None:
    result = run(
        status=running_status(),
        workers=[worker(0), worker(1, "Failed", exit_code=1, finished_at=ago(4))],
    )
    assert result.status.phase == "Restarting"
    assert result.status.restarts == 1
    assert result.status.restart_after == NOW + timedelta(seconds=10)
    assert result.status.last_failure is not None
    assert (result.status.last_failure.worker, result.status.last_failure.exit_code) == (1, 1)
    assert deleted(result) == {"j-worker-0", "j-worker-1"}
    assert created_pods(result) == []
    assert result.events[0].type == "Warning"
    assert ("fault_detection", 4.0) in [(t.metric, t.seconds) for t in result.timings]


def test_restart_waits_until_the_old_gang_is_gone() -> None:
    status = running_status(phase="Restarting", restarts=1, restartAfter=ago(5).isoformat())
    result = run(
        status=status, workers=[worker(0, deleting=True), worker(1, "Failed", exit_code=1)]
    )
    assert deleted(result) == {"j-worker-1"}
    assert created_pods(result) == []
    assert result.status.attempt == 1


def test_restart_waits_out_the_backoff() -> None:
    status = running_status(
        phase="Restarting", restarts=1, restartAfter=(NOW + timedelta(seconds=7)).isoformat()
    )
    result = run(status=status)
    assert result.actions == []
    assert result.requeue_after == 7.0


def test_next_attempt_is_recorded_and_created_once_backoff_passed() -> None:
    status = running_status(phase="Restarting", restarts=1, restartAfter=ago(1).isoformat())
    result = run(status=status)
    assert result.status.attempt == 2
    assert result.status.phase == "Pending"
    assert result.status.restarts == 1
    assert {p["metadata"]["labels"][ATTEMPT_LABEL] for p in created_pods(result)} == {"2"}


def test_recovery_is_measured_from_the_failure() -> None:
    status = running_status(
        phase="Pending",
        attempt=2,
        restarts=1,
        runningTime=None,
        lastFailure={"reason": "WorkerFailed", "time": ago(42).isoformat()},
    )
    result = run(status=status, workers=[worker(0, attempt=2), worker(1, attempt=2)])
    assert result.status.phase == "Running"
    assert [(t.metric, t.seconds) for t in result.timings] == [("recovery", 42.0)]


def test_exit_code_2_fails_the_job_and_stops_the_other_workers() -> None:
    result = run(status=running_status(), workers=[worker(0), worker(1, "Failed", exit_code=2)])
    assert result.status.phase == "Failed"
    assert result.status.completion_time == NOW
    failed = next(c for c in result.status.conditions if c.type == "Failed")
    assert failed.reason == "InvalidConfiguration"
    assert deleted(result) == {"j-worker-0"}


def test_restart_budget_used_up_fails_the_job() -> None:
    result = run(
        status=running_status(restarts=2), workers=[worker(0), worker(1, "Failed", exit_code=1)]
    )
    assert result.status.phase == "Failed"
    assert result.status.restarts == 2
    assert (
        next(c for c in result.status.conditions if c.type == "Failed").reason
        == "RestartLimitExceeded"
    )


def test_disruption_restarts_without_spending_the_budget() -> None:
    result = run(
        status=running_status(restarts=2),
        workers=[
            worker(0),
            worker(1, "Failed", exit_code=143, true_conditions=frozenset({"DisruptionTarget"})),
        ],
    )
    assert result.status.phase == "Restarting"
    assert (result.status.restarts, result.status.disruptions) == (2, 1)


def test_a_started_worker_whose_pod_vanished_restarts_uncounted() -> None:
    result = run(status=running_status(), workers=[worker(0)])
    assert result.status.phase == "Restarting"
    assert result.status.last_failure is not None
    assert result.status.last_failure.reason == "PodDeleted"
    assert result.status.disruptions == 1


def test_a_gang_half_created_before_a_crash_is_completed_not_restarted() -> None:
    result = run(status={"phase": "Pending", "attempt": 1}, workers=[worker(0, "Pending")])
    assert [p["metadata"]["name"] for p in created_pods(result)] == ["j-worker-1"]
    assert result.status.phase == "Pending"


def test_an_older_attempts_pods_are_removed_before_anything_else() -> None:
    result = run(status=running_status(attempt=2, phase="Pending"), workers=[worker(0, attempt=1)])
    assert deleted(result) == {"j-worker-0"}
    assert created_pods(result) == []


def test_a_step_that_does_not_advance_is_a_stall() -> None:
    progress_status = {"step": 40, "maxSteps": 100, "lastAdvanceTime": ago(90).isoformat()}
    result = run(
        status=running_status(runningTime=ago(300).isoformat(), progress=progress_status),
        workers=[worker(0), worker(1)],
        progress=TrainerProgress(step=40),
    )
    assert result.status.phase == "Restarting"
    assert result.status.last_failure is not None
    assert result.status.last_failure.reason == "Stalled"
    assert result.status.restarts == 1


def test_an_unreachable_rank0_counts_as_no_progress() -> None:
    progress_status = {"step": 40, "maxSteps": 100, "lastAdvanceTime": ago(61).isoformat()}
    result = run(
        status=running_status(runningTime=ago(300).isoformat(), progress=progress_status),
        workers=[worker(0), worker(1)],
        progress=TrainerProgress(error="connection refused"),
    )
    assert result.status.last_failure is not None
    assert result.status.last_failure.reason == "Stalled"


def test_advancing_steps_fill_progress_and_push_the_stall_deadline() -> None:
    progress_status = {"step": 40, "maxSteps": 1000, "lastAdvanceTime": ago(50).isoformat()}
    result = run(
        status=running_status(runningTime=ago(300).isoformat(), progress=progress_status),
        workers=[worker(0), worker(1)],
        progress=TrainerProgress(
            step=41, loss=2.500049, tokens_per_second=1024.0, last_checkpoint_step=40
        ),
    )
    progress = result.status.progress
    assert progress is not None
    assert (progress.step, progress.loss, progress.last_advance_time) == (41, 2.5, NOW)
    # 959 steps left (maxSteps 1000) x (4 samples x 2 ranks x 128 tokens) / 1024 tokens/s
    assert progress.eta_seconds == 959
    assert result.status.checkpoint is not None and result.status.checkpoint.step == 40
    assert result.status.phase == "Running"
    assert result.requeue_after == 60.0


def test_suspend_stops_the_gang_without_counting_a_failure() -> None:
    result = run(
        status=running_status(),
        workers=[worker(0), worker(1)],
        job_spec=spec(runPolicy={"suspend": True}),
    )
    assert result.status.phase == "Suspended"
    assert result.status.suspend_time == NOW
    assert deleted(result) == {"j-worker-0", "j-worker-1"}
    assert (result.status.restarts, result.status.disruptions) == (0, 0)
    exits = run(
        status=result.status.model_dump(mode="json", by_alias=True),
        workers=[worker(0, "Failed", exit_code=143, deleting=True)],
        job_spec=spec(runPolicy={"suspend": True}),
    )
    assert exits.status.phase == "Suspended"
    assert exits.status.restarts == 0


def test_resume_starts_a_new_attempt_and_banks_the_suspended_time() -> None:
    status = running_status(
        phase="Suspended", suspendTime=ago(120).isoformat(), suspendedSeconds=30
    )
    result = run(status=status)
    assert result.status.attempt == 2
    assert result.status.suspended_seconds == 150
    assert result.status.suspend_time is None
    assert len(created_pods(result)) == 2


def test_deadline_counts_active_time_only() -> None:
    deadline = spec(runPolicy={"activeDeadlineSeconds": 100})
    within = run(
        status=running_status(startTime=ago(150).isoformat(), suspendedSeconds=80),
        workers=[worker(0), worker(1)],
        job_spec=deadline,
    )
    assert within.status.phase == "Running"
    past = run(
        status=running_status(startTime=ago(150).isoformat()),
        workers=[worker(0), worker(1)],
        job_spec=deadline,
    )
    assert past.status.phase == "Failed"
    assert (
        next(c for c in past.status.conditions if c.type == "Failed").reason == "DeadlineExceeded"
    )
    assert deleted(past) == {"j-worker-0", "j-worker-1"}


def test_all_workers_exiting_zero_succeeds() -> None:
    result = run(
        status=running_status(),
        workers=[worker(0, "Succeeded", exit_code=0), worker(1, "Succeeded", exit_code=0)],
    )
    assert result.status.phase == "Succeeded"
    assert next(c for c in result.status.conditions if c.type == "Succeeded").status == "True"
    assert deleted(result) == set()
    assert result.status.progress is not None and result.status.progress.step == 1000
    assert result.status.checkpoint is not None and result.status.checkpoint.step == 1000


def test_ttl_deletes_the_finished_job_when_due() -> None:
    ttl = spec(runPolicy={"ttlSecondsAfterFinished": 50})
    done = {"phase": "Succeeded", "attempt": 1, "completionTime": ago(100).isoformat()}
    assert DeleteJob() in run(status=done, job_spec=ttl).actions
    later = spec(runPolicy={"ttlSecondsAfterFinished": 500})
    waiting = run(status=done, job_spec=later)
    assert waiting.actions == []
    assert waiting.requeue_after == 400.0


def test_unschedulable_workers_are_reported_then_fail_if_asked() -> None:
    stuck = [
        worker(0, "Pending", unschedulable_message="0/2 nodes: Insufficient nvidia.com/gpu"),
        worker(1, "Pending"),
    ]
    report = spec(failurePolicy={"schedulingTimeoutSeconds": 60})
    reported = run(status={"phase": "Pending", "attempt": 1}, workers=stuck, job_spec=report)
    running = next(c for c in reported.status.conditions if c.type == "Running")
    assert (running.status, running.reason) == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in running.message
    assert reported.events[0].reason == "Unschedulable"
    fail = spec(failurePolicy={"schedulingTimeoutSeconds": 60, "failOnSchedulingTimeout": True})
    failed = run(status={"phase": "Pending", "attempt": 1}, workers=stuck, job_spec=fail)
    assert failed.status.phase == "Failed"


def test_a_pod_stuck_terminating_on_a_lost_node_is_force_deleted() -> None:
    stuck = worker(0, deleting=True, deletion_deadline=ago(60))
    result = run(
        status=running_status(phase="Restarting", restartAfter=ago(1).isoformat()), workers=[stuck]
    )
    assert DeletePod("j-worker-0", force=True) in result.actions
    assert result.status.attempt == 1
    within_grace = worker(0, deleting=True, deletion_deadline=ago(10))
    waiting = run(
        status=running_status(phase="Restarting", restartAfter=ago(1).isoformat()),
        workers=[within_grace],
    )
    assert waiting.actions == []


def test_planning_twice_on_its_own_result_does_nothing_new() -> None:
    first = run(status=running_status(), workers=[worker(0), worker(1)])
    second = run(
        status=first.status.model_dump(mode="json", by_alias=True), workers=[worker(0), worker(1)]
    )
    assert second.actions == []
    assert second.events == []
    assert second.status == first.status


def test_invalid_spec_fails_once_with_the_field_named() -> None:
    result = plan_invalid(LLMTrainingJobStatus(), 4, "spec.workers: must be >= 1", NOW)
    assert result.status.phase == "Failed"
    condition = next(c for c in result.status.conditions if c.type == "Failed")
    assert (condition.reason, condition.message) == ("InvalidSpec", "spec.workers: must be >= 1")
    assert result.events[0].reason == "InvalidSpec"
    assert plan_invalid(result.status, 4, "spec.workers: must be >= 1", NOW).events == []


def test_a_plainly_deleted_running_pod_is_not_the_trainings_fault() -> None:
    result = run(status=running_status(), workers=[worker(0), worker(1, deleting=True)])
    assert result.status.phase == "Restarting"
    assert (result.status.restarts, result.status.disruptions) == (0, 1)
    assert result.status.last_failure is not None
    assert result.status.last_failure.reason == "PodDeleted"


def test_stall_detection_waits_for_the_attempts_first_step() -> None:
    result = run(
        status=running_status(runningTime=ago(3000).isoformat()),
        workers=[worker(0), worker(1)],
        progress=TrainerProgress(error="connection refused"),
    )
    assert result.status.phase == "Running"


def test_startup_is_timed_by_the_containers_even_when_seen_late() -> None:
    gang = [
        worker(0, "Succeeded", exit_code=0, started_at=ago(100)),
        worker(1, "Succeeded", exit_code=0, started_at=ago(90)),
    ]
    result = run(status={"phase": "Pending", "attempt": 1}, workers=gang)
    assert result.status.phase == "Succeeded"
    assert [(t.metric, t.seconds) for t in result.timings] == [("startup", 510.0)]


def test_a_counted_failure_waits_the_settle_time_for_a_disrupted_peer() -> None:
    settling = spec(failurePolicy={"failureSettleSeconds": 20, "maxRestarts": 0})
    survivor_failed = [worker(0, "Failed", exit_code=1, finished_at=ago(1)), worker(1)]
    first = run(status=running_status(), workers=survivor_failed, job_spec=settling)
    assert first.status.phase == "Running"
    assert first.status.last_failure is not None
    assert (first.status.last_failure.worker, first.status.last_failure.attempt) == (0, 1)
    assert first.actions == []
    assert first.requeue_after == 20.0
    assert [t.metric for t in first.timings] == ["fault_detection"]

    evicted_peer = worker(1, deleting=True, true_conditions=frozenset({"DisruptionTarget"}))
    later = run(
        status=first.status.model_dump(mode="json", by_alias=True),
        workers=[survivor_failed[0], evicted_peer],
        job_spec=settling,
    )
    assert later.status.phase == "Restarting"
    assert (later.status.restarts, later.status.disruptions) == (0, 1)
    assert later.status.last_failure is not None
    assert later.status.last_failure.time == NOW
    assert later.timings == []


def test_a_settled_failure_without_a_disrupted_peer_is_counted() -> None:
    settling = spec(failurePolicy={"failureSettleSeconds": 20})
    seen = {"reason": "WorkerFailed", "worker": 0, "attempt": 1, "time": ago(25).isoformat()}
    result = run(
        status=running_status(lastFailure=seen),
        workers=[worker(0, "Failed", exit_code=1), worker(1)],
        job_spec=settling,
    )
    assert result.status.phase == "Restarting"
    assert result.status.restarts == 1
