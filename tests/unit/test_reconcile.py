"""reconcile.plan: tables of observed states -> status and actions, with an injected clock."""

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from llmjob_operator.api import Condition, LLMTrainingJobSpec, LLMTrainingJobStatus
from llmjob_operator.observe import (
    ExitCheckpoint,
    NodeHealth,
    Observed,
    QueueVerdict,
    TrainerProgress,
    WorkerState,
)
from llmjob_operator.reconcile import (
    ApplyObject,
    DeleteJob,
    DeletePod,
    JobView,
    Plan,
    object_key,
    plan,
    plan_invalid,
    shrunk_size,
    status_write_due,
    with_spec_hash,
)
from llmjob_operator.render import (
    ATTEMPT_LABEL,
    POD_INPUTS_HASH_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    JobRef,
    RenderSettings,
    render,
)
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


def inputs_hash(pod: dict[str, Any]) -> str:
    annotation: str = pod["metadata"]["annotations"][POD_INPUTS_HASH_ANNOTATION]
    return annotation


def run(
    status: dict[str, Any] | None = None,
    workers: list[WorkerState] | None = None,
    job_spec: LLMTrainingJobSpec | None = None,
    progress: TrainerProgress | None = None,
    supporting: frozenset[str] = SUPPORTING,
    node_health: dict[str, NodeHealth] | None = None,
    ref: JobRef = REF,
    queue_verdict: QueueVerdict | None = None,
    exit_checkpoint: ExitCheckpoint | None = None,
) -> Plan:
    the_spec = job_spec or spec()
    view = JobView(
        ref=ref,
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
        node_health=node_health or {},
        queue_verdict=queue_verdict,
        exit_checkpoint=exit_checkpoint,
    )
    return plan(view, lambda s, attempt: render(ref, s, settings, attempt), observed, NOW)


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
    at_once = spec(failurePolicy={"maxRestarts": 2, "failureSettleSeconds": 0})
    result = run(
        status=running_status(restarts=2),
        workers=[worker(0), worker(1, "Failed", exit_code=1)],
        job_spec=at_once,
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


def test_an_unreachable_rank0_means_progress_unknown_never_a_stall() -> None:
    progress_status = {"step": 40, "maxSteps": 100, "lastAdvanceTime": ago(6100).isoformat()}
    result = run(
        status=running_status(runningTime=ago(7000).isoformat(), progress=progress_status),
        workers=[worker(0), worker(1)],
        progress=TrainerProgress(error="connection refused", read_time=NOW),
    )
    assert result.status.last_failure is None
    assert result.status.phase == "Running"
    assert result.actions == []
    unknown = next(c for c in result.status.conditions if c.type == "ProgressUnknown")
    assert (unknown.status, unknown.reason) == ("True", "MetricsUnreadable")
    assert [e.reason for e in result.events] == ["ProgressUnknown"]
    # The next successful read clears it.
    again = run(
        status=result.status.model_dump(mode="json", by_alias=True),
        workers=[worker(0), worker(1)],
        progress=TrainerProgress(step=41, last_step_time=ago(1), read_time=NOW),
    )
    cleared = next(c for c in again.status.conditions if c.type == "ProgressUnknown")
    assert (cleared.status, cleared.reason) == ("False", "MetricsRead")


def test_a_read_that_failed_before_the_gang_ran_sets_progress_unknown_as_it_starts() -> None:
    """The failed read may arrive before the pass that marks the gang Running; the same
    failure again changes nothing that would wake the job, so that pass must set it."""
    result = run(
        status=running_status(phase="Pending", runningTime=None),
        workers=[worker(0), worker(1)],
        progress=TrainerProgress(error="read deadline exceeded", read_time=NOW),
    )
    assert result.status.phase == "Running"
    unknown = next(c for c in result.status.conditions if c.type == "ProgressUnknown")
    assert (unknown.status, unknown.reason) == ("True", "MetricsUnreadable")


def test_a_checkpoint_fallback_is_a_condition_and_one_event_written_once() -> None:
    fell_back = TrainerProgress(
        step=101,
        last_step_time=ago(1),
        read_time=NOW,
        checkpoint_fallbacks=1,
        checkpoint_bad_step=200,
        resumed_step=100,
    )
    status = running_status(attempt=2, progress={"step": 100, "updatedTime": ago(1).isoformat()})
    workers = [worker(0, attempt=2), worker(1, attempt=2)]
    first = run(status=status, workers=workers, progress=fell_back)
    fallback = next(c for c in first.status.conditions if c.type == "CheckpointFallback")
    assert (fallback.status, fallback.reason) == ("True", "CheckpointUnloadable")
    assert fallback.message == (
        "attempt 2: the committed checkpoint at step 200 failed to load and was marked bad "
        "(kept on the volume); resumed from step 100"
    )
    assert [(e.type, e.reason, e.message) for e in first.events] == [
        ("Warning", "CheckpointUnloadable", fallback.message)
    ]
    assert first.status.phase == "Running"
    assert first.actions == []
    assert status_write_due(LLMTrainingJobStatus.model_validate(status), first.status, NOW, 30) == 0
    # The trainer exports the same figures for the whole attempt: a later pass adds no event
    # and no write; steps advancing are progress, on the progress budget (deferred).
    again = run(
        status=first.status.model_dump(mode="json", by_alias=True),
        workers=workers,
        progress=fell_back,
    )
    assert again.events == []
    assert status_write_due(first.status, again.status, NOW, 30) is None
    later = run(
        status=first.status.model_dump(mode="json", by_alias=True),
        workers=workers,
        progress=dataclasses.replace(fell_back, step=102),
    )
    assert later.events == []
    assert later.status.conditions == first.status.conditions
    assert status_write_due(first.status, later.status, NOW, 30) == 30


def test_each_attempts_fallback_is_reported_and_a_clean_attempt_keeps_the_record() -> None:
    earlier = {
        "type": "CheckpointFallback",
        "status": "True",
        "reason": "CheckpointUnloadable",
        "message": "attempt 2: the committed checkpoint at step 200 failed to load and was "
        "marked bad (kept on the volume); resumed from step 100",
        "lastTransitionTime": ago(600).isoformat(),
    }
    workers = [worker(0, attempt=3), worker(1, attempt=3)]
    clean = run(
        status=running_status(attempt=3, conditions=[earlier]),
        workers=workers,
        progress=TrainerProgress(step=150, read_time=NOW, resumed_step=140),
    )
    assert clean.events == []
    kept = [c for c in clean.status.conditions if c.type == "CheckpointFallback"]
    assert kept == [Condition.model_validate(earlier)]
    twice = run(
        status=running_status(attempt=3, conditions=[earlier]),
        workers=workers,
        progress=TrainerProgress(
            step=1, read_time=NOW, checkpoint_fallbacks=2, checkpoint_bad_step=50, resumed_step=0
        ),
    )
    fallback = next(c for c in twice.status.conditions if c.type == "CheckpointFallback")
    assert fallback.message == (
        "attempt 3: 2 committed checkpoints, down to step 50, failed to load and were marked "
        "bad (kept on the volume); started from step 0 (no earlier commit)"
    )
    assert [e.reason for e in twice.events] == ["CheckpointUnloadable"]
    # Still True: the transition time is the first fallback's.
    assert fallback.last_transition_time == ago(600)


def test_a_failed_read_reports_no_fallback() -> None:
    result = run(
        status=running_status(),
        workers=[worker(0), worker(1)],
        progress=TrainerProgress(error="refused", checkpoint_fallbacks=1, checkpoint_bad_step=9),
    )
    assert not any(c.type == "CheckpointFallback" for c in result.status.conditions)
    assert "CheckpointUnloadable" not in {e.reason for e in result.events}


def test_the_stall_clock_is_the_trainers_own_last_step_time() -> None:
    progress_status = {"step": 40, "maxSteps": 100, "lastAdvanceTime": ago(5).isoformat()}
    stuck = TrainerProgress(step=40, last_step_time=ago(61), read_time=NOW)
    result = run(
        status=running_status(runningTime=ago(300).isoformat(), progress=progress_status),
        workers=[worker(0), worker(1)],
        progress=stuck,
    )
    assert result.status.last_failure is not None
    assert result.status.last_failure.reason == "Stalled"
    fresh = TrainerProgress(step=40, last_step_time=ago(30), read_time=NOW)
    waiting = run(
        status=running_status(runningTime=ago(300).isoformat(), progress=progress_status),
        workers=[worker(0), worker(1)],
        progress=fresh,
    )
    assert waiting.status.last_failure is None
    assert waiting.requeue_after == 30.0


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


def test_the_pass_that_finishes_a_job_sets_its_ttl_clock() -> None:
    """No later event need come: the finishing pass's own status write is cached, so its
    echo wakes nothing (the TTL test on the cluster once waited out its 60 s for that)."""
    ttl = spec(runPolicy={"ttlSecondsAfterFinished": 3})
    finishing = run(
        status=running_status(),
        workers=[worker(0, "Succeeded", exit_code=0), worker(1, "Succeeded", exit_code=0)],
        job_spec=ttl,
    )
    assert finishing.status.phase == "Succeeded"
    assert finishing.requeue_after == 3.0


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


def test_a_pod_stuck_terminating_is_force_deleted_only_off_a_dead_node() -> None:
    restarting = running_status(phase="Restarting", restartAfter=ago(1).isoformat())
    stuck = worker(0, deleting=True, deletion_deadline=ago(5), node_name="n1", uid="p0")
    for health in ("NotReady", "Gone"):
        result = run(status=restarting, workers=[stuck], node_health={"n1": health})
        assert DeletePod("j-worker-0", "p0", 0) in result.actions
        assert result.status.attempt == 1
    # A live kubelet finishes the job itself, however late.
    alive = run(status=restarting, workers=[stuck], node_health={"n1": "Ready"})
    assert alive.actions == []
    # Within its grace period nothing is forced, whatever the node.
    within_grace = worker(0, deleting=True, deletion_deadline=NOW + timedelta(seconds=5))
    waiting = run(status=restarting, workers=[within_grace], node_health={"n1": "NotReady"})
    assert waiting.actions == []
    # Without permission to read nodes, only well past the deadline.
    unknown = {"n1": "Unknown"}
    assert run(status=restarting, workers=[stuck], node_health=unknown).actions == []
    late = worker(0, deleting=True, deletion_deadline=ago(31), node_name="n1", uid="p0")
    forced = run(status=restarting, workers=[late], node_health=unknown)
    assert DeletePod("j-worker-0", "p0", 0) in forced.actions


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


# -- the API budget, fast restarts, node loss, spec changes ------------------------------


def test_status_writes_only_when_something_a_user_sees_changes() -> None:
    base = LLMTrainingJobStatus.model_validate(
        running_status(progress={"step": 10, "maxSteps": 100, "updatedTime": ago(1).isoformat()})
    )

    def with_progress(**fields: Any) -> LLMTrainingJobStatus:
        assert base.progress is not None
        return base.model_copy(update={"progress": base.progress.model_copy(update=fields)})

    # Throughput, ETA and the read time alone never write.
    same = with_progress(tokens_per_second=123.0, eta_seconds=9, updated_time=NOW)
    assert status_write_due(base, same, NOW, progress_interval=10) is None
    # A new step is written at most once per progress interval: here in 9 more seconds.
    stepped = with_progress(step=11, updated_time=NOW)
    assert status_write_due(base, stepped, NOW, progress_interval=10) == 9.0
    assert status_write_due(base, stepped, NOW + timedelta(seconds=9), progress_interval=10) == 0
    # Anything else a user sees (phase, counts, conditions, checkpoint) is written at once.
    restarted = stepped.model_copy(update={"phase": "Restarting", "restarts": 1})
    assert status_write_due(base, restarted, NOW, progress_interval=10) == 0


def test_an_idle_job_plans_the_same_status_again() -> None:
    """Suspended, finished or waiting unchanged: a second pass over the first pass's status
    plans no write, no action and no event."""
    cases = [
        (
            running_status(phase="Suspended", suspendTime=ago(100).isoformat()),
            [],
            spec(runPolicy={"suspend": True}),
        ),
        (running_status(phase="Succeeded", completionTime=ago(100).isoformat()), [], spec()),
        (
            {"phase": "Pending", "attempt": 1, "startTime": ago(500).isoformat()},
            [
                worker(0, "Pending", unschedulable_message="0/2 nodes are available"),
                worker(1, "Pending", unschedulable_message="0/2 nodes are available"),
            ],
            spec(failurePolicy={"schedulingTimeoutSeconds": 60}),
        ),
    ]
    for status, workers, job_spec in cases:
        first = run(status=status, workers=workers, job_spec=job_spec)
        second = run(
            status=first.status.model_dump(mode="json", by_alias=True),
            workers=workers,
            job_spec=job_spec,
        )
        assert status_write_due(first.status, second.status, NOW, 10) is None, status["phase"]
        assert (second.actions, second.events) == ([], []), status["phase"]


def test_survivors_of_a_broken_gang_get_the_short_grace() -> None:
    result = run(
        status=running_status(),
        workers=[worker(0, uid="p0"), worker(1, "Failed", exit_code=1, uid="p1")],
    )
    assert DeletePod("j-worker-0", "p0", 10) in result.actions
    assert DeletePod("j-worker-1", "p1", 10) in result.actions


def test_an_evicted_gang_keeps_the_checkpoint_grace() -> None:
    evicted = worker(1, deleting=True, true_conditions=frozenset({"DisruptionTarget"}), uid="p1")
    result = run(status=running_status(), workers=[worker(0, uid="p0"), evicted])
    assert result.status.disruptions == 1
    assert DeletePod("j-worker-0", "p0", None) in result.actions


def test_node_loss_restarts_at_once_and_gives_the_counted_restart_back() -> None:
    # The survivor fails first; the lost node's pod still looks Running.
    survivor = worker(0, "Failed", exit_code=1, finished_at=ago(1), uid="p0", node_name="n0")
    stranded = worker(1, uid="p1", node_name="n1")
    first = run(status=running_status(), workers=[survivor, stranded])
    assert first.status.phase == "Restarting"
    assert (first.status.restarts, first.status.disruptions) == (1, 0)
    assert first.status.last_failure is not None and first.status.last_failure.counted
    # Teardown: the survivor is gone, the stranded pod is stuck on its dead node.
    stuck = worker(1, uid="p1", node_name="n1", deleting=True, deletion_deadline=ago(1))
    later = run(
        status=first.status.model_dump(mode="json", by_alias=True),
        workers=[stuck],
        node_health={"n1": "NotReady"},
    )
    assert (later.status.restarts, later.status.disruptions) == (0, 1)
    assert later.status.last_failure is not None
    assert later.status.last_failure.reason == "NodeLost"
    assert later.status.last_failure.counted is False
    assert DeletePod("j-worker-1", "p1", 0) in later.actions
    assert "RestartReclassified" in [e.reason for e in later.events]
    # Given back once only.
    again = run(
        status=later.status.model_dump(mode="json", by_alias=True),
        workers=[stuck],
        node_health={"n1": "NotReady"},
    )
    assert (again.status.restarts, again.status.disruptions) == (0, 1)


def test_a_final_failure_waits_for_a_dead_node_to_show() -> None:
    last_chance = spec(failurePolicy={"maxRestarts": 0})
    survivor = worker(0, "Failed", exit_code=1, finished_at=ago(1), node_name="n0")
    stranded = worker(1, node_name="n1")
    first = run(status=running_status(), workers=[survivor, stranded], job_spec=last_chance)
    assert first.status.phase == "Running"
    assert first.requeue_after == 60.0
    later = run(
        status=first.status.model_dump(mode="json", by_alias=True),
        workers=[survivor, stranded],
        job_spec=last_chance,
        node_health={"n0": "Ready", "n1": "NotReady"},
    )
    assert later.status.phase == "Restarting"
    assert (later.status.restarts, later.status.disruptions) == (0, 1)
    assert later.status.last_failure is not None
    assert later.status.last_failure.reason == "NodeLost"


def test_a_spec_change_of_a_running_gang_starts_a_new_attempt_uncounted() -> None:
    old_spec = spec()
    settings = RenderSettings(default_image="img")
    old_pods = render(REF, old_spec, settings, 1).pods
    workers = [worker(i, uid=f"p{i}", inputs_hash=inputs_hash(p)) for i, p in enumerate(old_pods)]
    unchanged = run(status=running_status(), workers=workers, job_spec=old_spec)
    assert unchanged.actions == []
    edited = spec(training={"seqLen": 128, "precision": "fp32", "learningRate": 1e-3})
    result = run(status=running_status(), workers=workers, job_spec=edited)
    assert result.status.phase == "Restarting"
    assert (result.status.restarts, result.status.disruptions) == (0, 0)
    # Every rank is healthy: the gang keeps its checkpoint grace, and no ConfigMap is
    # rewritten under it.
    assert {a for a in result.actions if isinstance(a, DeletePod)} == {
        DeletePod("j-worker-0", "p0", None),
        DeletePod("j-worker-1", "p1", None),
    }
    assert not [a for a in result.actions if isinstance(a, ApplyObject)]
    assert result.status.restart_after == NOW


def test_an_operator_upgrade_restarts_no_running_gang_only_an_edit_of_the_job_does() -> None:
    """Pods hash what the job's owner wrote, not what the operator rendered: a gang made by an
    older operator (another default image, other rendering) goes on untouched, and so does one
    whose failurePolicy or runPolicy was edited. Pods made before the hash was on them are
    left alone until their next attempt."""
    older_operator = RenderSettings(default_image="trainer:0.1")
    made = render(REF, spec(), older_operator, 1).pods
    gang = [worker(i, uid=f"p{i}", inputs_hash=inputs_hash(p)) for i, p in enumerate(made)]
    assert run(status=running_status(), workers=gang).actions == []
    policies_edited = spec(
        failurePolicy={"maxRestarts": 9, "backoffSeconds": 30, "stallTimeoutSeconds": 600},
        runPolicy={"ttlSecondsAfterFinished": 60},
    )
    assert run(status=running_status(), workers=gang, job_spec=policies_edited).actions == []
    # A field written at its default is the field left out, as a field an upgrade adds is.
    assert inputs_hash(render(REF, spec(metricsPort=9400), older_operator, 1).pods[0]) == (
        inputs_hash(made[0])
    )
    edited = spec(training={"seqLen": 256, "precision": "fp32"})
    assert run(status=running_status(), workers=gang, job_spec=edited).status.phase == (
        "Restarting"
    )
    unhashed = [worker(i, uid=f"p{i}") for i in range(2)]
    assert run(status=running_status(), workers=unhashed, job_spec=edited).actions == []


def test_editing_workers_starts_a_new_attempt_with_the_new_gang_size() -> None:
    settings = RenderSettings(default_image="img")
    for old_size, new_size in ((2, 1), (1, 3)):
        old_spec = spec(workers=old_size)
        new_spec = spec(workers=new_size)
        old = render(REF, old_spec, settings, 1)
        workers = [
            worker(i, uid=f"p{i}", inputs_hash=inputs_hash(p)) for i, p in enumerate(old.pods)
        ]
        edited = run(status=running_status(), workers=workers, job_spec=new_spec)
        assert edited.status.phase == "Restarting", (old_size, new_size)
        assert (edited.status.restarts, edited.status.disruptions) == (0, 0)
        assert deleted(edited) == {w.name for w in workers}
        assert created_pods(edited) == []
        # Once the old gang is gone: attempt 2 with the new size, and the ConfigMap (still
        # the old gang's hostfile) applied again.
        old_hashes = {
            object_key(b): with_spec_hash(b)["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
            for b in old.all
            if b["kind"] != "Pod"
        }
        view = JobView(REF, 4, ago(600), new_spec, edited.status)
        started = plan(
            view,
            lambda s, attempt: render(REF, s, settings, attempt),
            Observed(applied_hashes=old_hashes),
            NOW,
        )
        assert started.status.attempt == 2
        pods = created_pods(started)
        assert [p["metadata"]["name"] for p in pods] == [f"j-worker-{i}" for i in range(new_size)]
        assert {p["metadata"]["labels"][ATTEMPT_LABEL] for p in pods} == {"2"}
        env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
        assert env["LLMJOB_NUM_WORKERS"] == str(new_size)
        (config_map,) = [
            a.body
            for a in started.actions
            if isinstance(a, ApplyObject) and a.body["kind"] == "ConfigMap"
        ]
        assert len(config_map["data"]["hostfile"].splitlines()) == new_size
        assert started.status.workers.total == new_size


SHRINKABLE = {
    "workers": 4,
    "training": {"seqLen": 128, "precision": "fp32", "gradientAccumulationSteps": 3},
    "failurePolicy": {
        "backoffSeconds": 10,
        "survivorGracePeriodSeconds": 5,
        "onNodeLoss": {"shrinkAfterSeconds": 60, "minWorkers": 2},
    },
}


def test_shrunk_size_is_the_largest_placeable_gang_that_keeps_the_global_batch() -> None:
    four = spec(**SHRINKABLE)  # global batch: 12 micro-batches
    assert shrunk_size(four, placeable=3, below=4) == 3
    assert shrunk_size(four, placeable=9, below=4) == 3
    assert shrunk_size(four, placeable=3, below=3) == 2
    assert shrunk_size(four, placeable=1, below=4) is None  # minWorkers 2
    no_accumulation = spec(**{**SHRINKABLE, "training": {"seqLen": 128, "precision": "fp32"}})
    assert shrunk_size(no_accumulation, placeable=3, below=4) == 2  # 4 micro-batches
    assert shrunk_size(spec(workers=4), placeable=3, below=4) is None  # no onNodeLoss


def pending_gang(attempt: int, placed: int, total: int = 4) -> list[WorkerState]:
    """`placed` workers on nodes (their launchers waiting for the rest), the others
    unschedulable."""
    return [
        worker(i, attempt=attempt, uid=f"p{i}", node_name=f"n{i}")
        if i < placed
        else worker(
            i,
            "Pending",
            attempt=attempt,
            started=False,
            uid=f"p{i}",
            unschedulable_message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        )
        for i in range(total)
    ]


def restarted_status(waited: float, **fields: Any) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "attempt": 2,
        "startTime": ago(900).isoformat(),
        "attemptStartTime": ago(waited).isoformat(),
        "disruptions": 1,
        "checkpoint": {"step": 40},
        **fields,
    }


def test_a_restarted_gang_that_cannot_be_placed_shrinks_after_the_wait() -> None:
    shrinkable = spec(**SHRINKABLE)
    early = run(status=restarted_status(30), workers=pending_gang(2, 3), job_spec=shrinkable)
    assert early.status.phase == "Pending"
    assert early.actions == []
    assert early.requeue_after == 30.0
    result = run(status=restarted_status(61), workers=pending_gang(2, 3), job_spec=shrinkable)
    assert result.status.phase == "Restarting"
    assert result.status.gang_workers == 3
    assert (result.status.restarts, result.status.disruptions) == (0, 1)
    assert result.restart_reasons == ["GangShrunk"]
    restarting = next(c for c in result.status.conditions if c.type == "Restarting")
    assert restarting.reason == "GangShrunk"
    assert "1 of 4 workers of attempt 2 unschedulable for over 60s" in restarting.message
    assert "continues on 3 of 4 workers from the newest commit (step 40" in restarting.message
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "GangShrunk")]
    # The incomplete gang never trained: it goes with the survivors' short grace.
    assert {a for a in result.actions if isinstance(a, DeletePod)} == {
        DeletePod(f"j-worker-{i}", f"p{i}", 5) for i in range(4)
    }


def test_under_a_gang_scheduler_an_unplaced_gang_steps_down_one_size_per_wait() -> None:
    # All or none is bound, so no worker shows how many would fit.
    native = spec(**SHRINKABLE, scheduling={"gang": "Native"})
    result = run(status=restarted_status(61), workers=pending_gang(2, 0), job_spec=native)
    assert (result.status.phase, result.status.gang_workers) == ("Restarting", 3)
    again = run(
        status=restarted_status(61, attempt=3, gangWorkers=3),
        workers=pending_gang(3, 0, total=3),
        job_spec=native,
    )
    assert (again.status.phase, again.status.gang_workers) == ("Restarting", 2)
    at_min = run(
        status=restarted_status(61, attempt=4, gangWorkers=2),
        workers=pending_gang(4, 0, total=2),
        job_spec=native,
    )
    assert (at_min.status.phase, at_min.status.gang_workers) == ("Pending", 2)  # minWorkers 2
    assert not deleted(at_min)


def test_no_shrink_without_the_policy_a_commit_or_a_restart() -> None:
    shrinkable = spec(**SHRINKABLE)
    cases = {
        "no onNodeLoss": (restarted_status(61), spec(workers=4)),
        "nothing committed": (restarted_status(61, checkpoint=None), shrinkable),
        "first attempt": (restarted_status(61, attempt=1), shrinkable),
    }
    for case, (status, job_spec) in cases.items():
        attempt = status["attempt"]
        result = run(status=status, workers=pending_gang(attempt, 3), job_spec=job_spec)
        assert result.status.phase == "Pending", case
        assert result.status.gang_workers is None, case
        assert not deleted(result), case
    too_few = run(status=restarted_status(61), workers=pending_gang(2, 1), job_spec=shrinkable)
    assert (too_few.status.phase, too_few.actions) == ("Pending", [])


def test_the_shrunk_gang_starts_runs_and_finishes_on_fewer_workers() -> None:
    shrinkable = spec(**SHRINKABLE)
    shrinking = run(status=restarted_status(61), workers=pending_gang(2, 3), job_spec=shrinkable)
    status = shrinking.status.model_dump(mode="json", by_alias=True)
    started = run(status=status, job_spec=shrinkable, supporting=frozenset())
    assert (started.status.attempt, started.status.gang_workers) == (3, 3)
    pods = created_pods(started)
    assert [p["metadata"]["name"] for p in pods] == ["j-worker-0", "j-worker-1", "j-worker-2"]
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["LLMJOB_NUM_WORKERS"] == "3"
    (config_map,) = [
        a.body
        for a in started.actions
        if isinstance(a, ApplyObject) and a.body["kind"] == "ConfigMap"
    ]
    assert len(config_map["data"]["hostfile"].splitlines()) == 3
    train = json.loads(config_map["data"]["train.json"])
    # The training configuration is the spec's: its hash guards the resume, and the
    # trainer keeps the checkpoint's global batch itself.
    assert train["training"]["gradientAccumulationSteps"] == 3
    assert "AttemptStarted" in {e.reason for e in started.events}
    assert "3 of 4 workers" in started.events[-1].message

    # Its pods, made from the shrunk spec, are no spec change.
    gang = [
        worker(i, attempt=3, uid=f"q{i}", inputs_hash=inputs_hash(p)) for i, p in enumerate(pods)
    ]
    attempt3 = started.status.model_dump(mode="json", by_alias=True)
    running = run(status=attempt3, workers=gang, job_spec=shrinkable)
    assert running.status.phase == "Running"
    assert running.status.workers.summary == "3/3"
    assert not deleted(running)
    again = run(
        status=running.status.model_dump(mode="json", by_alias=True),
        workers=gang,
        job_spec=shrinkable,
    )
    assert status_write_due(running.status, again.status, NOW, 30) is None
    done = [dataclasses.replace(w, phase="Succeeded") for w in gang]
    finished = run(
        status=running.status.model_dump(mode="json", by_alias=True),
        workers=done,
        job_spec=shrinkable,
    )
    assert finished.status.phase == "Succeeded"


def test_the_next_restart_of_a_shrunk_gang_tries_the_whole_gang_again() -> None:
    shrinkable = spec(**SHRINKABLE)
    status = running_status(
        attempt=3, gangWorkers=3, restarts=1, phase="Restarting",
        restartAfter=ago(1).isoformat(),
    )  # fmt: skip
    grown = run(status=status, job_spec=shrinkable)
    assert (grown.status.attempt, grown.status.gang_workers) == (4, None)
    assert len(created_pods(grown)) == 4
    assert grown.status.workers.total == 4


def test_a_worker_whose_image_cannot_be_pulled_is_reported_once() -> None:
    waiting = worker(
        0,
        "Pending",
        started=False,
        waiting_reason="ErrImagePull",
        waiting_message="not built here",
        image="llmjob/nope:1",
    )
    status = {"phase": "Pending", "attempt": 1, "startTime": ago(50).isoformat()}
    first = run(status=status, workers=[waiting, worker(1, "Pending", started=False)])
    running = next(c for c in first.status.conditions if c.type == "Running")
    assert running.reason == "ImagePullFailed"
    assert "llmjob/nope:1" in running.message
    assert [e.reason for e in first.events] == ["ImagePullFailed"]
    backoff = worker(
        0, "Pending", started=False, waiting_reason="ImagePullBackOff", image="llmjob/nope:1"
    )
    second = run(
        status=first.status.model_dump(mode="json", by_alias=True),
        workers=[backoff, worker(1, "Pending", started=False)],
    )
    assert second.events == []
    assert status_write_due(first.status, second.status, NOW, 10) is None
