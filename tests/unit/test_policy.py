"""Failure classification, backoff and conditions: plain tables."""

from datetime import UTC, datetime, timedelta

import pytest

from llmjob_operator.api import FailurePolicy
from llmjob_operator.observe import WorkerState, worker_state
from llmjob_operator.policy import backoff_seconds, classify, set_condition
from llmjob_operator.render import ATTEMPT_LABEL, WORKER_INDEX_LABEL

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def failed(exit_code: int | None = 1, **fields: object) -> WorkerState:
    return WorkerState(
        name="j-worker-1", index=1, attempt=1, phase="Failed", exit_code=exit_code, **fields
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("worker", "action", "reason"),
    [
        (failed(1), "RestartJob", "WorkerFailed"),
        (failed(137, terminated_reason="OOMKilled"), "RestartJob", "OOMKilled"),
        (failed(2), "FailJob", "InvalidConfiguration"),
        (failed(3), "FailJob", "UnreadableData"),
        (failed(143), "RestartJobNotCounted", "Terminated"),
        (
            failed(137, true_conditions=frozenset({"DisruptionTarget"})),
            "RestartJobNotCounted",
            "Disrupted",
        ),
        (
            failed(
                137,
                true_conditions=frozenset({"DisruptionTarget"}),
                disruption_reason="DeletionByTaintManager",
            ),
            "RestartJobNotCounted",
            "NodeLost",
        ),
        (
            failed(
                137,
                true_conditions=frozenset({"DisruptionTarget"}),
                disruption_reason="PreemptionByScheduler",
            ),
            "RestartJobNotCounted",
            "Preempted",
        ),
        (failed(None, status_reason="Evicted"), "RestartJobNotCounted", "Evicted"),
        (failed(None, status_reason="NodeLost"), "RestartJobNotCounted", "NodeLost"),
    ],
)
def test_default_rules_follow_the_trainer_exit_code_contract(
    worker: WorkerState, action: str, reason: str
) -> None:
    verdict = classify(worker, FailurePolicy())
    assert (verdict.action, verdict.reason) == (action, reason)
    assert "worker 1" in verdict.message


def test_a_pod_the_taint_manager_deleted_off_a_lost_node_reads_as_node_lost() -> None:
    """The node lifecycle controller marks the pods of an unreachable node with DisruptionTarget
    (reason DeletionByTaintManager): the user reads NodeLost, not a generic disruption."""
    pod = {
        "metadata": {
            "name": "j-worker-1",
            "labels": {WORKER_INDEX_LABEL: "1", ATTEMPT_LABEL: "1"},
            "deletionTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"},
            ],
        },
    }
    worker = worker_state(pod)
    assert worker is not None and worker.disruption_reason == "DeletionByTaintManager"
    verdict = classify(worker, FailurePolicy())
    assert (verdict.action, verdict.reason) == ("RestartJobNotCounted", "NodeLost")


def test_user_rules_are_tried_in_order_before_the_defaults() -> None:
    policy = FailurePolicy.model_validate(
        {
            "rules": [
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
                {
                    "action": "RestartJobNotCounted",
                    "onExitCodes": {"operator": "NotIn", "values": [0, 42]},
                },
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [7]}},
            ]
        }
    )
    assert classify(failed(42), policy).action == "FailJob"
    assert classify(failed(7), policy).action == "RestartJobNotCounted"
    assert classify(failed(2), policy).action == "RestartJobNotCounted"


def test_pod_condition_rule_matches_true_conditions_only() -> None:
    policy = FailurePolicy.model_validate(
        {"rules": [{"action": "FailJob", "onPodConditions": ["DisruptionTarget"]}]}
    )
    assert (
        classify(failed(1, true_conditions=frozenset({"DisruptionTarget"})), policy).action
        == "FailJob"
    )
    assert classify(failed(1), policy).action == "RestartJob"


@pytest.mark.parametrize(
    ("restarts", "expected"), [(0, 10), (1, 10), (2, 20), (3, 40), (4, 80), (6, 300), (30, 300)]
)
def test_backoff_doubles_per_counted_restart_up_to_the_cap(restarts: int, expected: int) -> None:
    policy = FailurePolicy(backoff_seconds=10, max_backoff_seconds=300)
    assert backoff_seconds(policy, restarts) == expected


def test_condition_transition_time_moves_only_when_status_flips() -> None:
    first = set_condition([], "Running", True, "AllWorkersRunning", "up", T0, 1)
    later = T0 + timedelta(minutes=5)
    same = set_condition(first, "Running", True, "AllWorkersRunning", "still up", later, 2)
    assert same[0].last_transition_time == T0
    assert same[0].message == "still up"
    assert same[0].observed_generation == 2
    flipped = set_condition(same, "Running", False, "WorkerFailed", "down", later, 2)
    assert flipped[0].last_transition_time == later
    assert [c.type for c in set_condition(flipped, "Restarting", True, "R", "", later, 2)] == [
        "Running",
        "Restarting",
    ]
