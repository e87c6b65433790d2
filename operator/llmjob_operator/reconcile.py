"""PURE: plan(job, desired, observed, now) -> the status to write and the actions to take.

Level-based: the plan depends only on what is observed now and on the job's status
(the durable record), never on memory of earlier passes. The executor writes the new
status *before* acting, so a crash after the write repeats the actions (idempotent)
and a crash before it repeats the whole decision; either way no restart is counted
twice and no attempt's pods are created while an older attempt's still exist.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from llmjob_operator.api import (
    CheckpointStatus,
    Condition,
    FailureRecord,
    LLMTrainingJobSpec,
    LLMTrainingJobStatus,
    Phase,
    Progress,
    WorkerCounts,
)
from llmjob_operator.observe import ExitCheckpoint, Observed, TrainerProgress, WorkerState
from llmjob_operator.policy import (
    Verdict,
    backoff_seconds,
    classify,
    set_condition,
    shows_disruption,
    vanished_verdict,
)
from llmjob_operator.render import (
    POD_INPUTS_HASH_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    DesiredObjects,
    JobRef,
    content_hash,
)
from llmjob_trainer.config import checkpoint_tag

# A pod still Terminating past its deadline whose node the operator may not read (namespaced
# RBAC) is force-deleted only this much later; with node reads it needs a dead node.
STUCK_TERMINATION_MARGIN = timedelta(seconds=30)
# Pod waiting reasons that mean the container cannot start until someone fixes the spec or image.
IMAGE_WAITING_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
PROGRESS_UNKNOWN_CONDITION = "ProgressUnknown"
CHECKPOINT_FALLBACK_CONDITION = "CheckpointFallback"
# The Restarting reason of a restart onto fewer workers (failurePolicy.onNodeLoss).
GANG_SHRUNK = "GangShrunk"
QUEUED_CONDITION = "Queued"
# How often a Queued gang's queue verdict (Kueue's Workload conditions) is read again.
QUEUE_READ_SECONDS = 30.0
# How soon to look again while waiting for pods to go away (their events also wake us).
TEARDOWN_POLL_SECONDS = 2.0

DesiredFor = Callable[[LLMTrainingJobSpec, int], DesiredObjects]
"""The objects a job of this spec should own during a given attempt (a pure render, bound to
the job)."""


@dataclass(frozen=True)
class JobView:
    """The job as the executor read it."""

    ref: JobRef
    generation: int
    created: datetime
    spec: LLMTrainingJobSpec
    status: LLMTrainingJobStatus


@dataclass(frozen=True)
class ApplyObject:
    """Server-side apply of an owned object."""

    body: dict[str, Any]

    @property
    def key(self) -> str:
        return object_key(self.body)


@dataclass(frozen=True)
class DeletePod:
    """Delete exactly this pod (its UID); grace None keeps the pod's own grace period."""

    name: str
    uid: str
    grace_seconds: int | None = None


@dataclass(frozen=True)
class DeleteJob:
    """TTL after finishing has passed."""


Action = ApplyObject | DeletePod | DeleteJob


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Timing:
    """A duration the operator measured, for its own metrics."""

    metric: Literal["startup", "recovery", "fault_detection"]
    seconds: float


@dataclass(frozen=True)
class Plan:
    status: LLMTrainingJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)
    restart_reasons: list[str] = field(default_factory=list)
    requeue_after: float | None = None


def object_key(body: dict[str, Any]) -> str:
    return f"{body['kind']}/{body['metadata']['name']}"


def spec_hash(body: dict[str, Any]) -> str:
    """What an applied supporting object (ConfigMap, Service, claim, PodGroup) was rendered
    from: re-applied between attempts when it changes. Pods carry their inputs' hash instead
    (render.POD_INPUTS_HASH_ANNOTATION)."""
    content = {k: v for k, v in body.items() if k not in ("metadata", "status")}
    content["labels"] = body["metadata"].get("labels")
    # Only when there are any: objects without them hash as they did. The hash's own
    # annotation is left out, so hashing an applied object agrees with what it was made from.
    annotations = {
        k: v
        for k, v in (body["metadata"].get("annotations") or {}).items()
        if k != SPEC_HASH_ANNOTATION
    }
    if annotations:
        content["annotations"] = annotations
    return content_hash(content)


def with_spec_hash(body: dict[str, Any]) -> dict[str, Any]:
    metadata = dict(body["metadata"])
    metadata["annotations"] = {
        **metadata.get("annotations", {}),
        SPEC_HASH_ANNOTATION: spec_hash(body),
    }
    return {**body, "metadata": metadata}


class _Planner:
    """Accumulates one plan; every method is pure over (job, desired, observed, now)."""

    def __init__(
        self, job: JobView, desired: DesiredFor, observed: Observed, now: datetime
    ) -> None:
        self.job = job
        self.spec = job.spec
        self.desired = desired
        self.observed = observed
        self.now = now
        self.status = job.status.model_copy(update={"observed_generation": job.generation})
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.timings: list[Timing] = []
        self.restart_reasons: list[str] = []
        self.requeue: list[float] = []

    # -- building blocks ---------------------------------------------------------------

    def update(self, **fields: Any) -> None:
        self.status = self.status.model_copy(update=fields)

    def condition(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        conditions = set_condition(
            self.status.conditions, type_, status, reason, message, self.now, self.job.generation
        )
        self.update(conditions=conditions)

    def condition_is(self, type_: str, reason: str | None = None) -> bool:
        return any(
            c.type == type_ and c.status == "True" and (reason is None or c.reason == reason)
            for c in self.status.conditions
        )

    def transition(self, phase: Phase, reason: str, message: str, warning: bool = False) -> None:
        if self.status.phase != phase:
            self.events.append(Event("Warning" if warning else "Normal", reason, message))
        self.update(phase=phase)

    def wake_in(self, seconds: float) -> None:
        self.requeue.append(max(seconds, 0.5))

    def seconds_since(self, moment: datetime | None) -> float:
        return (self.now - moment).total_seconds() if moment else 0.0

    @property
    def gang_size(self) -> int:
        """Workers of the current gang: spec.workers unless failurePolicy.onNodeLoss shrank it."""
        shrunk = self.status.gang_workers
        return self.spec.workers if shrunk is None else min(shrunk, self.spec.workers)

    def desired_for(self, attempt: int) -> DesiredObjects:
        return self.desired(gang_spec(self.spec, self.gang_size), attempt)

    def current_workers(self) -> list[WorkerState]:
        return [w for w in self.observed.workers if w.attempt == self.status.attempt]

    def count_workers(self) -> None:
        current = self.current_workers()
        ready = sum(w.ready for w in current)
        self.update(
            workers=WorkerCounts(
                total=self.gang_size,
                ready=ready,
                running=sum(w.phase == "Running" for w in current),
                succeeded=sum(w.succeeded for w in current),
                failed=sum(w.failed for w in current),
                summary=f"{ready}/{self.gang_size}",
            )
        )

    def ensure_supporting_objects(self, only_missing: bool = False) -> None:
        """Claim, Service and ConfigMap: applied when missing or, between attempts, when their
        content changed. A running gang's ConfigMap is never rewritten under it: a change of
        what it holds changes the pods' hash and starts a new attempt instead."""
        for body in self.desired_for(max(self.status.attempt, 1)).all:
            if body["kind"] == "Pod":
                continue
            hashed = with_spec_hash(body)
            key = object_key(body)
            wanted = hashed["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
            applied = self.observed.applied_hashes.get(key)
            if applied is None or (applied != wanted and not only_missing):
                self.actions.append(ApplyObject(hashed))

    def create_missing_pods(self) -> None:
        present = {w.index for w in self.current_workers()}
        for index, body in enumerate(self.desired_for(self.status.attempt).pods):
            if index not in present:
                self.actions.append(ApplyObject(body))

    def delete_pods(self, workers: list[WorkerState], grace_seconds: int | None = None) -> None:
        for worker in workers:
            if not worker.deleting:
                self.actions.append(DeletePod(worker.name, worker.uid, grace_seconds))
            elif self.stuck_terminating(worker):
                self.actions.append(DeletePod(worker.name, worker.uid, 0))

    def node_of(self, worker: WorkerState) -> str | None:
        """NotReady or Gone when the worker's node is known to be dead; else None."""
        if worker.node_name is None:
            return None
        health = self.observed.node_health.get(worker.node_name)
        return health if health in ("NotReady", "Gone") else None

    def stuck_terminating(self, worker: WorkerState) -> bool:
        """Past its grace period a live kubelet has killed the container and removed the pod;
        one still there has no kubelet acting for it. Force-deleting is safe only when its
        node is dead (NotReady, tainted out-of-service or unreachable, or gone); where nodes
        cannot be read, only well past the deadline."""
        if worker.deletion_deadline is None or self.now <= worker.deletion_deadline:
            return False
        if self.node_of(worker) is not None:
            return True
        health = self.observed.node_health.get(worker.node_name or "")
        return health == "Unknown" and self.now > worker.deletion_deadline + (
            STUCK_TERMINATION_MARGIN
        )

    def start_attempt(self, attempt: int, message: str, gang_workers: int | None = None) -> None:
        """Record the new attempt first; its pods are created by the same plan, after the write.
        `gang_workers` fewer than spec.workers runs a shrunk gang; every other attempt tries the
        whole gang again (how a shrunk job grows back)."""
        self.update(
            gang_workers=gang_workers,
            attempt=attempt,
            attempt_start_time=self.now,
            running_time=None,
            restart_after=None,
            progress=self.status.progress.model_copy(update={"last_advance_time": None})
            if self.status.progress
            else None,
        )
        self.update(phase="Pending")
        self.events.append(Event("Normal", "AttemptStarted", message))
        self.ensure_supporting_objects()
        self.create_missing_pods()

    def finish(self, phase: Literal["Succeeded", "Failed"], reason: str, message: str) -> None:
        self.transition(phase, reason, message, warning=phase == "Failed")
        self.update(completion_time=self.now, restart_after=None)
        self.condition(phase, True, reason, message)
        self.condition("Running", False, reason, message)
        if self.condition_is("Restarting"):
            self.condition("Restarting", False, reason, message)
        self.clean_pods()
        # This pass may be the last an event brings: its own status write is cached, so the
        # write's echo from the watch wakes nothing. The TTL's clock is set here.
        self.expire_after_ttl()

    def clean_pods(self) -> None:
        policy = self.spec.run_policy.clean_pod_policy
        if policy == "None":
            return
        doomed = [
            w
            for w in self.observed.workers
            if policy == "All" or w.phase in ("Pending", "Running", "Unknown")
        ]
        self.delete_pods(doomed)

    # -- stages ------------------------------------------------------------------------

    def finished(self) -> None:
        self.clean_pods()
        self.expire_after_ttl()

    def expire_after_ttl(self) -> None:
        """runPolicy.ttlSecondsAfterFinished: delete the job when due, or wake then."""
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        if ttl is None or self.status.completion_time is None:
            return
        due = self.status.completion_time + timedelta(seconds=ttl)
        if self.now >= due:
            self.actions.append(DeleteJob())
        else:
            self.wake_in((due - self.now).total_seconds())

    def deadline_exceeded(self) -> bool:
        deadline = self.spec.run_policy.active_deadline_seconds
        if deadline is None or self.status.start_time is None:
            return False
        suspended = self.status.suspended_seconds + self.seconds_since(self.status.suspend_time)
        active = self.seconds_since(self.status.start_time) - suspended - self.queued_seconds()
        if active >= deadline:
            self.finish(
                "Failed",
                "DeadlineExceeded",
                f"the job ran {int(active)}s, past runPolicy.activeDeadlineSeconds ({deadline}s)",
            )
            return True
        if self.status.suspend_time is None and not self.condition_is(QUEUED_CONDITION):
            self.wake_in(deadline - active)
        return False

    def queued_seconds(self) -> float:
        """Seconds the job's gangs waited for a queue's admission, the current wait included:
        like suspension, not counted by activeDeadlineSeconds (a queued gang holds nothing)."""
        return self.status.queued_seconds + self.current_queue_wait()

    def current_queue_wait(self) -> float:
        queued = self.queued_condition()
        if queued is None or queued.status != "True":
            return 0.0
        return self.seconds_since(queued.last_transition_time)

    def leave_queue(self, reason: str, message: str) -> None:
        self.update(queued_seconds=int(self.queued_seconds()))
        self.condition(QUEUED_CONDITION, False, reason, message)

    def suspend(self) -> None:
        if self.status.phase != "Suspended":
            self.transition("Suspended", "Suspended", "runPolicy.suspend is true: workers stopped")
            self.update(suspend_time=self.now, restart_after=None)
            self.condition("Suspended", True, "Suspended", "runPolicy.suspend is true")
            self.condition("Running", False, "Suspended", "runPolicy.suspend is true")
        self.delete_pods(self.observed.workers)

    def resume(self) -> None:
        """Suspended -> a new attempt, once the suspended gang is gone."""
        if self.observed.workers:
            self.delete_pods(self.observed.workers)
            self.wake_in(TEARDOWN_POLL_SECONDS)
            return
        suspended = self.status.suspended_seconds + int(
            self.seconds_since(self.status.suspend_time)
        )
        self.update(suspended_seconds=suspended, suspend_time=None)
        if self.status.start_time is None:
            self.update(start_time=self.now)
        self.condition("Suspended", False, "Resumed", "runPolicy.suspend is false")
        self.start_attempt(
            self.status.attempt + 1, f"resumed: attempt {self.status.attempt + 1} started"
        )

    def restarting(self) -> None:
        """Tear the old gang down completely, wait out the backoff, then start the next attempt."""
        self.reclassify_as_disruption()
        if self.observed.workers:
            self.delete_pods(self.observed.workers)
            self.wake_in(TEARDOWN_POLL_SECONDS)
            return
        restart_after = self.status.restart_after
        if restart_after is not None and self.now < restart_after:
            self.wake_in((restart_after - self.now).total_seconds())
            return
        attempt = self.status.attempt + 1
        if self.condition_is("Restarting", GANG_SHRUNK) and self.status.gang_workers is not None:
            shrunk = self.status.gang_workers
            message = (
                f"attempt {attempt} started on {shrunk} of {self.spec.workers} workers "
                "(failurePolicy.onNodeLoss)"
            )
            self.start_attempt(attempt, message, shrunk)
            return
        self.start_attempt(attempt, f"attempt {attempt} started after a restart")

    def first_start(self) -> None:
        self.update(start_time=self.now)
        self.condition("Created", True, "Created", f"gang of {self.spec.workers} workers created")
        self.start_attempt(1, f"attempt 1 started with {self.spec.workers} workers")

    def verdict_for_failures(self) -> tuple[Verdict, WorkerState | None] | None:
        current = self.current_workers()
        failed = sorted(
            (w for w in current if w.failed),
            key=lambda w: (w.finished_at or self.now, w.index),
        )
        if failed:
            return classify(failed[0], self.spec.failure_policy), failed[0]
        for worker in current:
            if worker.deleting and not worker.succeeded:
                # Deleted under a running gang: a disruption (eviction, preemption, node loss)
                # says so with a pod condition; a plain delete is not the training's fault.
                if worker.disrupted:
                    return classify(worker, self.spec.failure_policy), worker
                return vanished_verdict(worker.index), worker
        present = {w.index for w in current}
        gang_started = any(w.started for w in current)
        missing = [i for i in range(self.gang_size) if i not in present]
        if missing and gang_started:
            return vanished_verdict(missing[0]), None
        return self.stall_verdict()

    def stall_verdict(self) -> tuple[Verdict, None] | None:
        """Armed once this attempt's first step is seen: start-up (imports, JIT builds,
        rendezvous) has no step to watch and is bounded by the launcher's own timeouts.
        The clock is the trainer's own last-step time from a successful read: a read that
        fails (a partition, a network policy) means progress unknown, never a stall."""
        timeout = self.spec.failure_policy.stall_timeout_seconds
        progress = self.status.progress
        seen = self.observed.progress
        if timeout == 0 or self.status.phase != "Running" or progress is None:
            return None
        if seen is None or seen.error is not None or progress.last_advance_time is None:
            return None
        # Measured at the read, so a read that is older than now cannot age the step.
        read_at = seen.read_time or self.now
        idle = (read_at - progress.last_advance_time).total_seconds()
        if idle < timeout:
            self.wake_in(timeout - idle)
            return None
        step = progress.step if progress else 0
        return (
            Verdict(
                "RestartJob",
                "Stalled",
                f"training step stayed at {step} for {int(idle)}s "
                f"(failurePolicy.stallTimeoutSeconds={timeout})",
            ),
            None,
        )

    def this_attempts_failure(self) -> FailureRecord | None:
        failure = self.status.last_failure
        return failure if failure and failure.attempt == self.status.attempt else None

    def record_failure(self, verdict: Verdict, worker: WorkerState | None) -> FailureRecord:
        """The status says a worker failed as soon as it is seen, even while the restart
        is still being decided; the first sighting's time is kept."""
        first = self.this_attempts_failure()
        record = FailureRecord(
            reason=verdict.reason,
            message=verdict.message,
            worker=worker.index if worker else None,
            exit_code=worker.exit_code if worker else None,
            attempt=self.status.attempt,
            time=first.time if first else self.now,
        )
        self.update(last_failure=record)
        if first is None and worker is not None and worker.finished_at is not None:
            detected = self.seconds_since(worker.finished_at)
            self.timings.append(Timing("fault_detection", max(detected, 0.0)))
        return record

    def disruption_evidence(self, attempt: int) -> tuple[Verdict, WorkerState] | None:
        """A worker of `attempt` that shows the gang was disrupted rather than at fault: a
        DisruptionTarget condition or disruption reason, or a dead node under it."""
        gang = [w for w in self.observed.workers if w.attempt == attempt]
        disrupted = next((w for w in gang if shows_disruption(w)), None)
        if disrupted is not None:
            return classify(disrupted, self.spec.failure_policy), disrupted
        for worker in gang:
            if (health := self.node_of(worker)) is not None:
                message = f"worker {worker.index}'s node {worker.node_name} is {health}"
                return Verdict("RestartJobNotCounted", "NodeLost", message), worker
        return None

    def settle(
        self, verdict: Verdict, worker: WorkerState | None
    ) -> tuple[Verdict, WorkerState | None] | None:
        """A counted failure that would end the job (its restart budget is used up) waits
        failureSettleSeconds for signs of a disruption that would explain it; None while
        waiting. Restarts within the budget never wait: they are reclassified later."""
        evidence = self.disruption_evidence(self.status.attempt)
        if evidence is not None:
            return evidence
        if self.status.restarts < self.spec.failure_policy.max_restarts:
            return verdict, worker
        settle_seconds = self.spec.failure_policy.failure_settle_seconds
        first = self.this_attempts_failure()
        waited = self.seconds_since(first.time) if first else 0.0
        if waited >= settle_seconds:
            return verdict, worker
        if first is None:
            message = (
                f"{verdict.message}; waiting {settle_seconds}s for signs of a disruption "
                "before failing the job (failurePolicy.maxRestarts used up)"
            )
            self.condition("Running", False, verdict.reason, message)
        self.record_failure(verdict, worker)
        self.wake_in(settle_seconds - waited)
        return None

    def handle_failure(self, verdict: Verdict, worker: WorkerState | None) -> None:
        record = self.record_failure(verdict, worker)
        policy = self.spec.failure_policy
        # A gang whose worker exited, vanished or hung cannot commit a checkpoint any more:
        # its survivors get the short grace. A worker still terminating (evicted, preempted,
        # deleted) is checkpointing with its peers: they all keep their own grace.
        broken = worker is None or not worker.deleting
        grace = policy.survivor_grace_period_seconds if broken else None
        if verdict.action == "FailJob":
            self.finish("Failed", verdict.reason, verdict.message)
            return
        if verdict.action == "RestartJob":
            if self.status.restarts >= policy.max_restarts:
                self.finish(
                    "Failed",
                    "RestartLimitExceeded",
                    f"{verdict.message}; failurePolicy.maxRestarts ({policy.max_restarts}) used up",
                )
                return
            self.update(restarts=self.status.restarts + 1)
            delay = backoff_seconds(policy, self.status.restarts)
        else:
            self.update(disruptions=self.status.disruptions + 1)
            delay = policy.backoff_seconds
        counted = verdict.action == "RestartJob"
        self.update(last_failure=record.model_copy(update={"counted": counted}))
        self.restart_reasons.append(verdict.reason)
        message = f"{verdict.message}; restarting the gang in {delay}s"
        self.transition("Restarting", verdict.reason, message, warning=True)
        self.update(restart_after=self.now + timedelta(seconds=delay), running_time=None)
        self.condition("Restarting", True, verdict.reason, message)
        self.condition("Running", False, verdict.reason, message)
        self.delete_pods(self.observed.workers, grace)
        self.wake_in(TEARDOWN_POLL_SECONDS)

    def reclassify_as_disruption(self) -> None:
        """A counted restart whose failed gang later shows a disruption (the lost node's pod
        marked DisruptionTarget, its node NotReady or gone) gives the restart back."""
        failure = self.status.last_failure
        if failure is None or not failure.counted or failure.attempt != self.status.attempt:
            return
        evidence = self.disruption_evidence(failure.attempt)
        if evidence is None:
            return
        verdict, _ = evidence
        if verdict.action != "RestartJobNotCounted":
            return
        message = f"{verdict.message}: the restart after {failure.reason} was a disruption"
        self.update(
            restarts=max(self.status.restarts - 1, 0),
            disruptions=self.status.disruptions + 1,
            last_failure=failure.model_copy(
                update={"counted": False, "reason": verdict.reason, "message": message}
            ),
        )
        backoff_due = failure.time + timedelta(seconds=self.spec.failure_policy.backoff_seconds)
        if self.status.restart_after is not None and backoff_due < self.status.restart_after:
            self.update(restart_after=backoff_due)
        self.events.append(Event("Normal", "RestartReclassified", message))

    def scheduling_timeout(self) -> None:
        """Reports workers the scheduler cannot place; fails the job if the policy says so."""
        policy = self.spec.failure_policy
        if policy.scheduling_timeout_seconds == 0:
            return
        admitted = self.admission_time()
        for worker in self.current_workers():
            if worker.unschedulable_message is None:
                continue
            # Time queued is not time unschedulable: the clock starts at admission.
            clock_start = max((t for t in (worker.created, admitted) if t), default=None)
            waited = self.seconds_since(clock_start)
            if waited < policy.scheduling_timeout_seconds:
                self.wake_in(policy.scheduling_timeout_seconds - waited)
                continue
            # No running count of seconds in the message: it would rewrite the status each pass.
            message = (
                f"worker {worker.index} unschedulable for over "
                f"{policy.scheduling_timeout_seconds}s: {worker.unschedulable_message}"
            )
            if policy.fail_on_scheduling_timeout:
                self.finish("Failed", "Unschedulable", message)
                return
            if not self.condition_is("Running") and not any(
                c.type == "Running" and c.reason == "Unschedulable" for c in self.status.conditions
            ):
                self.events.append(Event("Warning", "Unschedulable", message))
            self.condition("Running", False, "Unschedulable", message)
            return

    def admission_time(self) -> datetime | None:
        """When this attempt's gang left the queue (its gates were lifted), if it queued."""
        queued = self.queued_condition()
        if queued is None or queued.status != "False" or self.status.attempt_start_time is None:
            return None
        at = queued.last_transition_time
        return at if at >= self.status.attempt_start_time else None

    def track_queueing(self) -> bool:
        """Queued while this attempt's workers wait behind a scheduling gate (Kueue's admission
        gate: the group is not admitted under its ClusterQueue's quota yet). A queued gang holds
        no node and no quota, and none of the start-up clocks runs. Returns whether queued."""
        current = self.current_workers()
        gated = [w for w in current if w.scheduling_gates]
        if gated and not any(w.started for w in current):
            gates = ", ".join(sorted({gate for w in gated for gate in w.scheduling_gates}))
            queue = f" in queue {self.job.ref.queue_name}" if self.job.ref.queue_name else ""
            message = (
                f"{len(gated)}/{self.spec.workers} workers of attempt {self.status.attempt} "
                f"wait for admission{queue} (scheduling gate {gates})"
            )
            self.transition("Queued", "Queued", message)
            verdict = self.observed.queue_verdict
            if verdict is None:
                self.condition(QUEUED_CONDITION, True, "SchedulingGated", message)
            else:
                detail = f"{message}: {verdict.message}"
                self.condition(QUEUED_CONDITION, True, verdict.reason, detail)
            if self.job.ref.queue_name:
                # The queue's reason changes without any pod changing: look again now and then.
                self.wake_in(QUEUE_READ_SECONDS)
            return True
        message = f"attempt {self.status.attempt} admitted: no scheduling gate left"
        if self.condition_is(QUEUED_CONDITION):
            self.leave_queue("Admitted", message)
            if self.status.phase == "Queued":
                self.transition("Pending", "Admitted", message)
        elif current and self.admission_unrecorded(message):
            # Admitted before any pass saw its gate (with free quota Kueue ungates a group
            # within milliseconds of its create): the condition still spoke of an earlier
            # attempt. Its transition time stays, so no clock starts from this.
            self.condition(QUEUED_CONDITION, False, "Admitted", message)
        return False

    def admission_unrecorded(self, message: str) -> bool:
        """A queued job's Queued condition was last set before this attempt started, and does
        not say `message` (this attempt's admission) yet."""
        queued = self.queued_condition()
        started = self.status.attempt_start_time
        return (
            self.job.ref.queue_name is not None
            and queued is not None
            and queued.status == "False"
            and started is not None
            and queued.last_transition_time < started
            and queued.message != message
        )

    def queued_condition(self) -> Condition | None:
        return next((c for c in self.status.conditions if c.type == QUEUED_CONDITION), None)

    def spec_changed(self) -> bool:
        """A pod of the current attempt was made from another spec than the job's now."""
        desired = self.desired_for(self.status.attempt).pods
        for worker in self.current_workers():
            # Made by an operator older than the inputs hash: left alone until its next attempt.
            if worker.inputs_hash is None:
                continue
            if worker.index >= len(desired):
                return True
            wanted = desired[worker.index]["metadata"]["annotations"][POD_INPUTS_HASH_ANNOTATION]
            if wanted != worker.inputs_hash:
                return True
        return False

    def restart_for_spec_change(self) -> None:
        """Edits of what shapes the gang (workers, image, resources, training configuration)
        take effect as a new attempt: the healthy gang checkpoints on SIGTERM, as for a
        suspend, and the next attempt resumes from that commit. Counted as neither a restart
        nor a disruption: the owner asked for it."""
        message = (
            f"the spec changed (generation {self.job.generation}): attempt "
            f"{self.status.attempt} checkpoints and stops, the next starts from the new spec"
        )
        self.restart_reasons.append("SpecChanged")
        self.transition("Restarting", "SpecChanged", message)
        self.update(restart_after=self.now, running_time=None)
        self.condition("Restarting", True, "SpecChanged", message)
        self.condition("Running", False, "SpecChanged", message)
        self.delete_pods(self.observed.workers)
        self.wake_in(TEARDOWN_POLL_SECONDS)

    def shrink_for_lost_capacity(self) -> bool:
        """failurePolicy.onNodeLoss: a restarted gang whose workers the scheduler could not all
        place for shrinkAfterSeconds goes on, as the next attempt, with as many as were placed
        (at least minWorkers, and a size that keeps the global batch). Only from a committed
        checkpoint: the trainer keeps its global batch through gradient accumulation, where a
        fresh start on fewer ranks would train another run. True when it shrank."""
        policy = self.spec.failure_policy.on_node_loss
        if policy is None or self.status.attempt < 2 or self.status.running_time is not None:
            return False
        current = self.current_workers()
        stuck = [w for w in current if w.unschedulable_message is not None]
        committed = self.status.checkpoint
        if not stuck or committed is None or committed.step <= 0:
            return False
        waited = self.seconds_since(self.status.attempt_start_time)
        if waited < policy.shrink_after_seconds:
            self.wake_in(policy.shrink_after_seconds - waited)
            return False
        if self.spec.scheduling.gang is None:
            placed = sum(w.node_name is not None for w in current)
        else:
            # A gang scheduler binds all workers or none, so how many would fit is not
            # shown: try the next smaller size; each further wait steps down again.
            placed = self.gang_size - 1
        size = shrunk_size(self.spec, placed, self.gang_size)
        if size is None:
            return False
        message = (
            f"{len(stuck)} of {self.gang_size} workers of attempt {self.status.attempt} "
            f"unschedulable for over {policy.shrink_after_seconds}s "
            f"({(stuck[0].unschedulable_message or '')[:200]}); the next attempt continues on "
            f"{size} of {self.spec.workers} workers from the newest commit (step "
            f"{committed.step} at the last read) (failurePolicy.onNodeLoss)"
        )
        self.restart_reasons.append(GANG_SHRUNK)
        self.transition("Restarting", GANG_SHRUNK, message, warning=True)
        self.update(restart_after=self.now, running_time=None, gang_workers=size)
        self.condition("Restarting", True, GANG_SHRUNK, message)
        self.condition("Running", False, GANG_SHRUNK, message)
        # An incomplete gang never trained: nothing to commit, no grace to wait out.
        self.delete_pods(
            self.observed.workers, self.spec.failure_policy.survivor_grace_period_seconds
        )
        self.wake_in(TEARDOWN_POLL_SECONDS)
        return True

    def waiting_on_image(self) -> None:
        """A worker whose image cannot be pulled waits forever, as a kubelet's does: say so."""
        for worker in self.current_workers():
            if worker.waiting_reason not in IMAGE_WAITING_REASONS:
                continue
            message = f"worker {worker.index} cannot start: image {worker.image} cannot be pulled"
            if not any(
                c.type == "Running" and c.reason == "ImagePullFailed" and c.message == message
                for c in self.status.conditions
            ):
                detail = f"{message} ({worker.waiting_reason}: {worker.waiting_message or ''})"
                self.events.append(Event("Warning", "ImagePullFailed", detail.strip()))
            self.condition("Running", False, "ImagePullFailed", message)
            return

    def track_progress_readability(self) -> None:
        """ProgressUnknown while rank 0's /metrics cannot be read; cleared by the next read."""
        seen = self.observed.progress
        if seen is None or self.status.phase != "Running":
            return
        if seen.error is not None:
            # The first error names the cause; later ones (time-outs vs refusals) would only
            # rewrite the status.
            if not self.condition_is(PROGRESS_UNKNOWN_CONDITION):
                self.events.append(
                    Event("Warning", "ProgressUnknown", f"cannot read progress: {seen.error}")
                )
                self.condition(
                    PROGRESS_UNKNOWN_CONDITION, True, "MetricsUnreadable", seen.error[:500]
                )
        elif self.condition_is(PROGRESS_UNKNOWN_CONDITION):
            self.condition(PROGRESS_UNKNOWN_CONDITION, False, "MetricsRead", "progress read")

    def record_checkpoint_fallback(self, seen: TrainerProgress | None) -> None:
        """The trainer passed over committed checkpoints that failed to load at this attempt's
        resume (it marks them bad and keeps them): said once per attempt, in a condition that
        stays as the record (a later clean attempt does not make the bad files good) and in
        one Warning event. The same read on every pass changes nothing."""
        if seen is None or seen.error is not None or seen.checkpoint_bad_step is None:
            return
        if seen.checkpoint_fallbacks <= 0:
            return
        message = fallback_message(self.status.attempt, seen)
        if any(
            c.type == CHECKPOINT_FALLBACK_CONDITION and c.status == "True" and c.message == message
            for c in self.status.conditions
        ):
            return
        self.events.append(Event("Warning", "CheckpointUnloadable", message))
        self.condition(CHECKPOINT_FALLBACK_CONDITION, True, "CheckpointUnloadable", message)

    def running(self) -> None:
        current = self.current_workers()
        stale = [w for w in self.observed.workers if w.attempt != self.status.attempt]
        if stale:
            # An older attempt's pods (a crash mid-restart): never run two gangs at once.
            self.delete_pods(stale)
            self.wake_in(TEARDOWN_POLL_SECONDS)
            return
        if self.spec_changed():
            self.restart_for_spec_change()
            return
        self.ensure_supporting_objects(only_missing=True)
        queued = self.track_queueing()
        gang_started = len(current) == self.gang_size and all(w.started for w in current)
        if self.status.running_time is None and gang_started:
            self.mark_running(current)
        # After mark_running: a read that failed before the gang was Running must still set the
        # condition, since the same failure again wakes no one.
        self.track_progress_readability()
        found = self.verdict_for_failures()
        if found is not None and found[0].action == "RestartJob":
            found = self.settle(*found)
            if found is None:
                return
        if found is not None:
            self.handle_failure(*found)
            return
        if len(current) == self.gang_size and all(w.succeeded for w in current):
            self.record_completion()
            self.finish("Succeeded", "Completed", f"all {self.gang_size} workers exited 0")
            return
        if not any(w.started for w in current):
            self.create_missing_pods()
        # A queued gang waits for quota, not for lost capacity: it never shrinks.
        if queued or self.shrink_for_lost_capacity():
            return
        self.waiting_on_image()
        self.scheduling_timeout()

    def mark_running(self, gang: list[WorkerState]) -> None:
        """Every worker's container started. Timed by the containers' own start times, so the
        figures hold even when a busy operator first looks after the fact."""
        at = max(w.started_at or self.now for w in gang)
        message = f"all {self.gang_size} workers of attempt {self.status.attempt} running"
        if self.gang_size < self.spec.workers:
            message += f" ({self.gang_size} of {self.spec.workers}: failurePolicy.onNodeLoss)"
        self.transition("Running", "Running", message)
        self.update(running_time=at)
        self.condition("Running", True, "AllWorkersRunning", message)
        if self.condition_is("Restarting"):
            self.condition("Restarting", False, "Recovered", message)
        if self.status.attempt == 1 and self.status.restarts + self.status.disruptions == 0:
            self.timings.append(Timing("startup", (at - self.job.created).total_seconds()))
        elif self.status.last_failure is not None:
            recovery = (at - self.status.last_failure.time).total_seconds()
            self.timings.append(Timing("recovery", recovery))

    def record_completion(self) -> None:
        """Exit 0 means every step ran and the final checkpoint is committed (DESIGN §3);
        the last /metrics read may predate the last steps."""
        max_steps = self.spec.training.max_steps
        progress = self.status.progress or Progress()
        self.update(
            progress=progress.model_copy(
                update={"step": max_steps, "max_steps": max_steps, "eta_seconds": 0}
            )
        )
        self.record_checkpoint(max_steps, self.now)

    def record_progress(self, seen: TrainerProgress | None) -> None:
        if seen is None or seen.step is None or seen.error is not None:
            return
        old = self.status.progress
        last_advance = seen.last_step_time
        if last_advance is None:
            # A user's own script may not export the trainer's last-step clock: then the
            # operator's first sighting of each step stands in for it.
            kept = old.last_advance_time if old is not None and old.step == seen.step else None
            last_advance = kept or seen.read_time or self.now
        max_steps = self.spec.training.max_steps
        eta = None
        if seen.tokens_per_second:
            tokens_per_step = (
                self.spec.training.samples_per_step(self.spec.world_size)
                * self.spec.training.seq_len
            )
            eta = int((max_steps - seen.step) * tokens_per_step / seen.tokens_per_second)
        self.update(
            progress=Progress(
                step=seen.step,
                max_steps=max_steps,
                loss=round(seen.loss, 4) if seen.loss is not None else None,
                tokens_per_second=seen.tokens_per_second,
                eta_seconds=eta,
                updated_time=self.now,
                last_advance_time=last_advance,
            )
        )
        if seen.last_checkpoint_step is not None and seen.last_checkpoint_step > 0:
            self.record_checkpoint(seen.last_checkpoint_step, seen.last_checkpoint_time)

    def record_checkpoint(self, step: int, time: datetime | None) -> None:
        self.update(checkpoint=CheckpointStatus(step=step, tag=checkpoint_tag(step), time=time))

    def record_exit_checkpoint(self, reported: ExitCheckpoint | None) -> None:
        """Between attempts no /metrics is read: a checkpoint the workers committed on their
        way out (a preemption's or a suspension's SIGTERM) is known from their exit reports.
        While Running, rank 0's /metrics stays the one source (it also tells of a fallback
        below the last report)."""
        known = self.status.checkpoint
        if reported is None or (known is not None and reported.step <= known.step):
            return
        self.record_checkpoint(reported.step, reported.time)

    def build(self) -> Plan:
        phase = self.status.phase
        if phase in ("Succeeded", "Failed"):
            self.finished()
        elif self.spec.run_policy.suspend:
            if self.status.start_time is None or not self.deadline_exceeded():
                self.suspend()
        elif phase == "Suspended":
            self.resume()
        elif self.status.attempt == 0:
            self.first_start()
        elif not self.deadline_exceeded():
            if phase == "Restarting":
                self.restarting()
            else:
                self.record_progress(self.observed.progress)
                self.running()
                # After running(): a phase change's own event stays the first (metrics label
                # transitions with it).
                self.record_checkpoint_fallback(self.observed.progress)
        if self.status.phase not in ("Running", "Succeeded"):
            self.record_exit_checkpoint(self.observed.exit_checkpoint)
        if self.status.phase != "Queued" and self.condition_is(QUEUED_CONDITION):
            # Suspended, restarted or finished while queued: the queued gang is gone.
            phase = self.status.phase or "Pending"
            self.leave_queue(phase, f"the job is {phase}")
        self.count_workers()
        return Plan(
            status=self.status,
            actions=self.actions,
            events=self.events,
            timings=self.timings,
            restart_reasons=self.restart_reasons,
            requeue_after=min(self.requeue) if self.requeue else None,
        )


def gang_spec(spec: LLMTrainingJobSpec, workers: int) -> LLMTrainingJobSpec:
    """The spec a gang of `workers` runs: fewer workers, the same training configuration (its
    hash guards the resume; the trainer keeps the checkpoint's global batch by itself)."""
    if workers >= spec.workers:
        return spec
    return spec.model_copy(update={"workers": workers})


def shrunk_size(spec: LLMTrainingJobSpec, placeable: int, below: int) -> int | None:
    """The largest gang of at most `placeable` and fewer than `below` workers, and at least
    failurePolicy.onNodeLoss.minWorkers, whose ranks divide the global batch into whole
    micro-batches (the trainer keeps it exactly then); None when there is none."""
    policy = spec.failure_policy.on_node_loss
    if policy is None:
        return None
    micro_batches = spec.training.samples_per_step(spec.world_size) // (
        spec.training.micro_batch_size
    )
    for workers in range(min(placeable, below - 1), policy.min_workers - 1, -1):
        if micro_batches % (workers * spec.slots_per_worker) == 0:
            return workers
    return None


def fallback_message(attempt: int, seen: TrainerProgress) -> str:
    """What a checkpoint fallback cost, in words: the bad step(s) and where training resumed."""
    if seen.checkpoint_fallbacks == 1:
        bad = f"the committed checkpoint at step {seen.checkpoint_bad_step} failed to load and was"
    else:
        bad = (
            f"{seen.checkpoint_fallbacks} committed checkpoints, down to step "
            f"{seen.checkpoint_bad_step}, failed to load and were"
        )
    if seen.resumed_step is None:
        resumed = "resumed from an earlier commit"
    elif seen.resumed_step == 0:
        resumed = "started from step 0 (no earlier commit)"
    else:
        resumed = f"resumed from step {seen.resumed_step}"
    return f"attempt {attempt}: {bad} marked bad (kept on the volume); {resumed}"


def _without_progress(status: LLMTrainingJobStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude={"progress"})


def _progress_shown(status: LLMTrainingJobStatus) -> tuple[object, ...] | None:
    """The progress a user reads in `kubectl get`: step and loss (rounded by the planner)."""
    progress = status.progress
    return None if progress is None else (progress.step, progress.loss, progress.max_steps)


def status_write_due(
    old: LLMTrainingJobStatus, new: LLMTrainingJobStatus, now: datetime, progress_interval: float
) -> float | None:
    """The API budget of the status: 0 to write now, a number of seconds to write a
    progress-only change later (at most one such write per progress interval), None when
    nothing a user can see changed (throughput and ETA alone never cause a write)."""
    if _without_progress(old) != _without_progress(new):
        return 0
    if _progress_shown(old) == _progress_shown(new):
        return None
    last = old.progress.updated_time if old.progress else None
    if last is None:
        return 0
    remaining = progress_interval - (now - last).total_seconds()
    return 0 if remaining <= 0 else remaining


def plan(job: JobView, desired: DesiredFor, observed: Observed, now: datetime) -> Plan:
    """Decide the job's next status and the actions that bring the world towards it."""
    return _Planner(job, desired, observed, now).build()


def plan_invalid(status: LLMTrainingJobStatus, generation: int, error: str, now: datetime) -> Plan:
    """A spec that passed the CRD schema but not the API's validation: fail once, loudly."""
    if status.phase == "Failed":
        return Plan(status=status)
    conditions = set_condition(
        status.conditions, "Failed", True, "InvalidSpec", error, now, generation
    )
    failed = status.model_copy(
        update={
            "phase": "Failed",
            "conditions": conditions,
            "observed_generation": generation,
            "completion_time": now,
        }
    )
    return Plan(status=failed, events=[Event("Warning", "InvalidSpec", error)])
