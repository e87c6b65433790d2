"""PURE: failure classification, restart backoff and conditions (no I/O, injected clock)."""

from dataclasses import dataclass
from datetime import datetime

from llmjob_operator.api import Condition, ExitCodeRule, FailureAction, FailurePolicy, FailureRule
from llmjob_operator.observe import WorkerState

# Trainer exit codes (DESIGN §3).
EXIT_INVALID_CONFIG = 2
EXIT_UNREADABLE_DATA = 3
EXIT_SIGTERM_CHECKPOINTED = 143
DISRUPTION_CONDITION = "DisruptionTarget"
# Pod status reasons of a pod taken away by the cluster rather than failed by its program.
DISRUPTION_REASONS = frozenset({"Evicted", "NodeLost", "Preempting", "Terminated"})
# The DisruptionTarget condition's reasons (set by Kubernetes' own controllers) as the reason a
# user reads in lastFailure: the taint manager and pod GC act on pods of an unreachable or
# deleted node.
DISRUPTION_TARGET_REASONS = {
    "DeletionByTaintManager": "NodeLost",
    "DeletionByPodGC": "NodeLost",
    "PreemptionByScheduler": "Preempted",
    "EvictionByEvictionAPI": "Evicted",
    "TerminationByKubelet": "Terminated",
    # Kueue's TerminationTarget: "WorkloadEvictedDueTo" + why Kueue evicted the group.
    "WorkloadEvictedDueToPreempted": "Preempted",
}
KUEUE_EVICTION_PREFIX = "WorkloadEvictedDueTo"


def disruption_reason(worker: WorkerState) -> str:
    """Who took a disrupted worker's pod away, as lastFailure.reason says it."""
    given = worker.disruption_reason or ""
    if given in DISRUPTION_TARGET_REASONS:
        return DISRUPTION_TARGET_REASONS[given]
    return "Evicted" if given.startswith(KUEUE_EVICTION_PREFIX) else "Disrupted"


@dataclass(frozen=True)
class Verdict:
    """What to do about a failed worker, and how to report it."""

    action: FailureAction
    reason: str
    message: str


def _codes_match(rule: ExitCodeRule, exit_code: int | None) -> bool:
    if exit_code is None:
        return False
    inside = exit_code in rule.values
    return inside if rule.operator == "In" else not inside


def _rule_matches(rule: FailureRule, worker: WorkerState) -> bool:
    if rule.on_exit_codes is not None:
        return _codes_match(rule.on_exit_codes, worker.exit_code)
    return bool(worker.true_conditions.intersection(rule.on_pod_conditions or []))


def _describe(worker: WorkerState) -> str:
    parts = [f"worker {worker.index} ({worker.name})"]
    if worker.exit_code is not None:
        parts.append(f"exited with code {worker.exit_code}")
    if worker.terminated_reason:
        parts.append(f"[{worker.terminated_reason}]")
    if worker.status_reason:
        parts.append(f"pod reason {worker.status_reason}")
    if worker.terminated_message:
        parts.append(f": {worker.terminated_message.strip()[-300:]}")
    return " ".join(parts)


def default_verdict(worker: WorkerState) -> Verdict:
    """The trainer's exit-code contract, and Kubernetes' disruption signals."""
    text = _describe(worker)
    if worker.disrupted:
        return Verdict("RestartJobNotCounted", disruption_reason(worker), text)
    if worker.status_reason in DISRUPTION_REASONS:
        return Verdict("RestartJobNotCounted", worker.status_reason, text)
    if worker.exit_code == EXIT_INVALID_CONFIG:
        return Verdict("FailJob", "InvalidConfiguration", text)
    if worker.exit_code == EXIT_UNREADABLE_DATA:
        return Verdict("FailJob", "UnreadableData", text)
    if worker.exit_code == EXIT_SIGTERM_CHECKPOINTED:
        return Verdict("RestartJobNotCounted", "Terminated", text)
    if worker.terminated_reason == "OOMKilled":
        return Verdict("RestartJob", "OOMKilled", text)
    return Verdict("RestartJob", "WorkerFailed", text)


def classify(worker: WorkerState, policy: FailurePolicy) -> Verdict:
    """The first matching user rule decides; otherwise the defaults do."""
    fallback = default_verdict(worker)
    for rule in policy.rules:
        if _rule_matches(rule, worker):
            return Verdict(rule.action, fallback.reason, fallback.message)
    return fallback


def shows_disruption(worker: WorkerState) -> bool:
    return worker.disrupted or worker.status_reason in DISRUPTION_REASONS


def vanished_verdict(worker_index: int) -> Verdict:
    """A started worker's pod was deleted by someone else: the gang is broken, not at fault."""
    return Verdict(
        "RestartJobNotCounted",
        "PodDeleted",
        f"worker {worker_index}'s pod was deleted while the gang was running",
    )


def backoff_seconds(policy: FailurePolicy, counted_restarts: int) -> int:
    """Exponential from backoffSeconds, doubling per counted restart, capped."""
    if counted_restarts <= 0:
        return policy.backoff_seconds
    return min(policy.backoff_seconds * (1 << (counted_restarts - 1)), policy.max_backoff_seconds)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    wanted = "True" if status else "False"
    current = next((c for c in conditions if c.type == type_), None)
    transition = (
        now if current is None or current.status != wanted else current.last_transition_time
    )
    updated = Condition(
        type=type_,
        status=wanted,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type != type_]
    return (
        [*others, updated]
        if current is None
        else [updated if c.type == type_ else c for c in conditions]
    )
