"""PURE: what the operator observed of a job's world, as plain values.

`kube.py`/`progress.py` build these from API objects and /metrics; `policy` and
`reconcile` decide from them. Keeping the parsing of a pod body here (not in kube.py)
keeps it testable with plain dicts.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from llmjob_operator.render import ATTEMPT_LABEL, POD_INPUTS_HASH_ANNOTATION, WORKER_INDEX_LABEL

NodeHealth = Literal["Ready", "NotReady", "Gone", "Unknown"]
"""A pod's node as the operator last read it: Unknown when it may not read nodes."""
# Taints that mean the node's kubelet will not finish anything (Kubernetes' own).
DEAD_NODE_TAINTS = frozenset(
    {"node.kubernetes.io/out-of-service", "node.kubernetes.io/unreachable"}
)
# Pod conditions that say who took the pod away: Kubernetes' own, and the one Kueue sets on the
# pods of a pod group it stops (evicted, preempted) before it deletes them.
DISRUPTION_CONDITIONS = ("DisruptionTarget", "TerminationTarget")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class WorkerState:
    """One worker pod as the kubelet and API server reported it."""

    name: str
    index: int
    attempt: int
    phase: str
    uid: str = ""
    node_name: str | None = None
    inputs_hash: str | None = None
    ready: bool = False
    started: bool = False
    deleting: bool = False
    deletion_deadline: datetime | None = None
    exit_code: int | None = None
    terminated_reason: str | None = None
    terminated_message: str | None = None
    finished_at: datetime | None = None
    started_at: datetime | None = None
    true_conditions: frozenset[str] = frozenset()
    # The reason given on a DISRUPTION_CONDITIONS condition (who took the pod away, and why).
    disruption_reason: str | None = None
    unschedulable_message: str | None = None
    status_reason: str | None = None
    created: datetime | None = None
    pod_ip: str | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    image: str | None = None
    scheduling_gates: tuple[str, ...] = ()
    """Gates that keep the scheduler from placing the pod (Kueue's admission gate)."""

    @property
    def disrupted(self) -> bool:
        """The pod was taken away (evicted, preempted, its node lost), not failed."""
        return not self.true_conditions.isdisjoint(DISRUPTION_CONDITIONS)

    @property
    def failed(self) -> bool:
        return self.phase == "Failed"

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"


def worker_state(pod: dict[str, Any]) -> WorkerState | None:
    """Parse a worker pod body; None for a pod without our labels."""
    meta = pod.get("metadata", {})
    labels = meta.get("labels") or {}
    if WORKER_INDEX_LABEL not in labels or ATTEMPT_LABEL not in labels:
        return None
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    true_conditions = frozenset(c["type"] for c in conditions if c.get("status") == "True")
    disruptions = [
        c
        for c in conditions
        if c.get("type") in DISRUPTION_CONDITIONS and c.get("status") == "True"
    ]
    disruption_reason = disruptions[0].get("reason") if disruptions else None
    unschedulable = next(
        (
            c.get("message") or c.get("reason") or "Unschedulable"
            for c in conditions
            if c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ),
        None,
    )
    exit_code = reason = message = None
    finished_at = started_at = None
    waiting_reason = waiting_message = image = None
    started = False
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "waiting" in state and waiting_reason is None:
            waiting_reason = state["waiting"].get("reason")
            waiting_message = state["waiting"].get("message")
            image = container.get("image")
        if "running" in state:
            started = True
            started_at = parse_time(state["running"].get("startedAt"))
        terminated = state.get("terminated")
        if terminated:
            started = True
            started_at = parse_time(terminated.get("startedAt"))
            if exit_code is None or terminated.get("exitCode", 0) != 0:
                exit_code = terminated.get("exitCode")
                reason = terminated.get("reason")
                # The trainer's exit report is data, not the failure's description.
                message = terminated.get("message")
                if exit_report(message) is not None:
                    message = None
                finished_at = parse_time(terminated.get("finishedAt"))
    return WorkerState(
        name=meta["name"],
        index=int(labels[WORKER_INDEX_LABEL]),
        attempt=int(labels[ATTEMPT_LABEL]),
        phase=status.get("phase", "Pending"),
        uid=meta.get("uid", ""),
        node_name=(pod.get("spec") or {}).get("nodeName"),
        inputs_hash=(meta.get("annotations") or {}).get(POD_INPUTS_HASH_ANNOTATION),
        ready="Ready" in true_conditions,
        started=started,
        deleting=meta.get("deletionTimestamp") is not None,
        deletion_deadline=parse_time(meta.get("deletionTimestamp")),
        exit_code=exit_code,
        terminated_reason=reason,
        terminated_message=message,
        finished_at=finished_at,
        started_at=started_at,
        true_conditions=true_conditions,
        disruption_reason=disruption_reason,
        unschedulable_message=unschedulable,
        status_reason=status.get("reason"),
        created=parse_time(meta.get("creationTimestamp")),
        pod_ip=status.get("podIP"),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        image=image,
        scheduling_gates=tuple(
            gate["name"] for gate in (pod.get("spec") or {}).get("schedulingGates") or []
        ),
    )


@dataclass(frozen=True)
class ExitCheckpoint:
    """The newest committed checkpoint a worker named in its exit report."""

    attempt: int
    step: int
    time: datetime | None
    """When it was committed, where the report says (not for the one an attempt resumed from)."""

    def supersedes(self, other: "ExitCheckpoint | None") -> bool:
        """A later attempt's report wins even with a lower step: that attempt fell back past
        an unloadable checkpoint, and said so when it resumed."""
        return other is None or (self.attempt, self.step) > (other.attempt, other.step)


def exit_report(message: str | None) -> tuple[int, datetime | None] | None:
    """The step (and commit time) a trainer's exit report names: its termination message,
    `{"lastCheckpointStep": N, "committedAt": T}` (DESIGN §3 as amended); None for any other
    message."""
    if not message or not message.lstrip().startswith("{"):
        return None
    try:
        report = json.loads(message)
    except ValueError:
        return None
    if not isinstance(report, dict):
        return None
    step, committed = report.get("lastCheckpointStep"), report.get("committedAt")
    if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
        return None
    try:
        return step, parse_time(committed) if isinstance(committed, str) else None
    except ValueError:
        return step, None


def exit_checkpoint(pod: dict[str, Any]) -> ExitCheckpoint | None:
    """What a worker pod's ended containers reported (the newest step of them)."""
    attempt = ((pod.get("metadata") or {}).get("labels") or {}).get(ATTEMPT_LABEL, "")
    if not attempt.isdigit():
        return None
    reports = []
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        report = exit_report(terminated.get("message"))
        if report is not None:
            reports.append(ExitCheckpoint(int(attempt), *report))
    return max(reports, key=lambda r: r.step, default=None)


@dataclass(frozen=True)
class TrainerProgress:
    """What rank 0's /metrics said, or why it could not be read."""

    step: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    last_checkpoint_step: int | None = None
    last_checkpoint_time: datetime | None = None
    last_step_time: datetime | None = None
    """The trainer's own clock of its last finished step: the stall clock."""
    checkpoint_fallbacks: int = 0
    """Committed checkpoints this attempt's resume found unloadable (marked bad, skipped)."""
    checkpoint_bad_step: int | None = None
    """Step of the last of those."""
    resumed_step: int | None = None
    """Step of the checkpoint this attempt resumed from (0: it started from nothing)."""
    error: str | None = None
    read_time: datetime | None = None


@dataclass(frozen=True)
class QueueVerdict:
    """Why the queue has not admitted the gang yet, in the queue's own words (Kueue's)."""

    reason: str
    message: str


def kueue_verdict(workload: dict[str, Any]) -> QueueVerdict | None:
    """The first of Kueue's Workload conditions that holds the gang back: no quota reserved
    (the ClusterQueue is full, or preemption is on its way), then admission checks pending.
    None once admitted, or while Kueue has not looked at the Workload yet."""
    conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    for type_ in ("QuotaReserved", "Admitted"):
        condition = conditions.get(type_)
        if condition is None:
            return None
        if condition.get("status") != "True":
            return QueueVerdict(
                reason=str(condition.get("reason") or type_),
                message=str(condition.get("message") or ""),
            )
    return None


@dataclass(frozen=True)
class Observed:
    """Everything plan() looks at besides the job's own spec and status."""

    workers: list[WorkerState] = field(default_factory=list)
    applied_hashes: dict[str, str] = field(default_factory=dict)
    """`Kind/name` of each non-pod object the job owns (Service, ConfigMap, claim) -> the
    spec hash annotation it carries."""
    progress: TrainerProgress | None = None
    """The latest read of rank 0's /metrics for the current attempt (None: none yet)."""
    node_health: dict[str, NodeHealth] = field(default_factory=dict)
    """Health of the nodes of workers stuck terminating (read only for those)."""
    queue_verdict: QueueVerdict | None = None
    """The queue's reason for not admitting a Queued gang yet (read only while Queued)."""
    exit_checkpoint: ExitCheckpoint | None = None
    """The newest checkpoint any of the job's workers reported as it ended, kept by the cache
    past the pod's deletion (a preempted gang's pods are gone before the job is queued)."""


def node_health(node: dict[str, Any]) -> NodeHealth:
    """Ready, or NotReady when the Ready condition is not True or a dead-node taint is set."""
    taints = {t.get("key") for t in (node.get("spec") or {}).get("taints") or []}
    if taints & DEAD_NODE_TAINTS:
        return "NotReady"
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return "Ready" if condition.get("status") == "True" else "NotReady"
    return "NotReady"
