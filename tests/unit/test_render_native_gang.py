"""scheduling.gang Native: each attempt's gang is one scheduling.k8s.io/v1beta1 PodGroup
(KEP-4671) that its workers name in spec.schedulingGroup, applied once when the attempt starts
and never again while it runs."""

from datetime import UTC, datetime, timedelta
from typing import Any

from llmjob_operator.api import LLMTrainingJobSpec, LLMTrainingJobStatus
from llmjob_operator.observe import Observed, WorkerState
from llmjob_operator.reconcile import (
    ApplyObject,
    JobView,
    Plan,
    gang_spec,
    object_key,
    plan,
    spec_hash,
    with_spec_hash,
)
from llmjob_operator.render import (
    SPEC_HASH_ANNOTATION,
    DesiredObjects,
    JobRef,
    RenderSettings,
    pod_group_name,
    render,
)
from tests.unit.specs import minimal_spec

JOB = JobRef(name="llama", namespace="team-a", uid="0f1e2d3c-aaaa-bbbb")
SETTINGS = RenderSettings(default_image="default/trainer:1")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def native_spec(**overrides: Any) -> LLMTrainingJobSpec:
    scheduling = {"gang": "Native", **overrides.pop("scheduling", {})}
    return LLMTrainingJobSpec.model_validate(minimal_spec(scheduling=scheduling, **overrides))


def rendered(attempt: int = 1, **overrides: Any) -> DesiredObjects:
    return render(JOB, native_spec(**overrides), SETTINGS, attempt)


def test_native_renders_the_attempts_pod_group_owned_by_the_job() -> None:
    desired = rendered(attempt=3, workers=3)
    assert desired.pod_group == {
        "apiVersion": "scheduling.k8s.io/v1beta1",
        "kind": "PodGroup",
        "metadata": {
            "name": "llama-0f1e2d3c-3",
            "namespace": "team-a",
            "labels": desired.service["metadata"]["labels"],
            "ownerReferences": [
                {
                    "apiVersion": "training.llmjob.dev/v1alpha1",
                    "kind": "LLMTrainingJob",
                    "name": "llama",
                    "uid": "0f1e2d3c-aaaa-bbbb",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"schedulingPolicy": {"gang": {"minCount": 3}}},
    }
    assert desired.pod_group["metadata"]["name"] == pod_group_name(JOB, 3)
    # Applied before the pods: the scheduler holds pods back until their group exists.
    kinds = [obj["kind"] for obj in desired.all]
    assert kinds.index("PodGroup") < kinds.index("Pod")


def test_every_worker_names_its_attempts_group_for_the_default_scheduler() -> None:
    desired = rendered(attempt=2)
    for pod in desired.pods:
        assert pod["spec"]["schedulingGroup"] == {"podGroupName": "llama-0f1e2d3c-2"}
        assert "schedulerName" not in pod["spec"]
        assert "scheduling.x-k8s.io/pod-group" not in pod["metadata"]["labels"]
        assert "scheduling.k8s.io/group-name" not in pod["metadata"].get("annotations", {})
    own = rendered(scheduling={"schedulerName": "second-scheduler"})
    assert {pod["spec"]["schedulerName"] for pod in own.pods} == {"second-scheduler"}


def test_no_gang_means_no_group_and_no_reference() -> None:
    plain = render(JOB, LLMTrainingJobSpec.model_validate(minimal_spec()), SETTINGS, 1)
    assert plain.pod_group is None
    assert all("schedulingGroup" not in pod["spec"] for pod in plain.pods)


def test_each_attempt_has_its_own_group_and_one_attempt_always_the_same() -> None:
    first, again, second = rendered(attempt=1), rendered(attempt=1), rendered(attempt=2)
    assert first.pod_group is not None and second.pod_group is not None
    assert first.pod_group["metadata"]["name"] != second.pod_group["metadata"]["name"]
    # Rendering is deterministic: the same attempt hashes the same, so it is not re-applied.
    assert again.pod_group is not None
    assert spec_hash(first.pod_group) == spec_hash(again.pod_group)
    assert [spec_hash(p) for p in first.pods] == [spec_hash(p) for p in again.pods]


def test_a_shrunk_gang_counts_its_own_workers_and_the_priority_class_is_the_groups() -> None:
    spec = native_spec(workers=4, scheduling={"priorityClassName": "train-high"})
    desired = render(JOB, gang_spec(spec, 2), SETTINGS, 5)
    assert desired.pod_group is not None
    assert desired.pod_group["spec"] == {
        "schedulingPolicy": {"gang": {"minCount": 2}},
        "priorityClassName": "train-high",
    }
    assert len(desired.pods) == 2


# -- the planner: one PodGroup apply per attempt, none per reconcile tick ---------------------


def planned(status: dict[str, Any], applied_attempts: list[int]) -> Plan:
    spec = native_spec()
    hashes = {}
    for attempt in applied_attempts:
        for body in render(JOB, spec, SETTINGS, attempt).all:
            if body["kind"] != "Pod":
                hashed = with_spec_hash(body)
                hashes[object_key(body)] = hashed["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    view = JobView(
        ref=JOB,
        generation=1,
        created=NOW - timedelta(seconds=600),
        spec=spec,
        status=LLMTrainingJobStatus.model_validate(status),
    )
    workers = [
        WorkerState(
            name=f"llama-worker-{i}",
            index=i,
            attempt=status.get("attempt", 1),
            phase="Running",
            started=True,
            ready=True,
            created=NOW - timedelta(seconds=300),
        )
        for i in range(2)
        if status.get("phase") == "Running"
    ]
    observed = Observed(workers=workers, applied_hashes=hashes, progress=None, node_health={})
    return plan(view, lambda s, a: render(JOB, s, SETTINGS, a), observed, NOW)


def applied_groups(result: Plan) -> list[str]:
    return [
        a.body["metadata"]["name"]
        for a in result.actions
        if isinstance(a, ApplyObject) and a.body["kind"] == "PodGroup"
    ]


def test_the_first_attempt_applies_its_group_before_its_pods() -> None:
    result = planned({}, applied_attempts=[])
    assert applied_groups(result) == ["llama-0f1e2d3c-1"]
    kinds = [a.body["kind"] for a in result.actions if isinstance(a, ApplyObject)]
    assert kinds.index("PodGroup") < kinds.index("Pod")


def test_a_running_attempt_applies_nothing_and_a_restart_applies_the_next_group() -> None:
    started = (NOW - timedelta(seconds=100)).isoformat()
    running = {
        "phase": "Running",
        "attempt": 1,
        "startTime": started,
        "attemptStartTime": started,
        "runningTime": started,
    }
    assert [a for a in planned(running, [1]).actions if isinstance(a, ApplyObject)] == []
    restarting = {
        **running,
        "phase": "Restarting",
        "restarts": 1,
        "restartAfter": (NOW - timedelta(seconds=1)).isoformat(),
    }
    result = planned(restarting, [1])
    assert result.status.attempt == 2
    assert applied_groups(result) == ["llama-0f1e2d3c-2"]
