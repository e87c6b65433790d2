"""The operator's gangs under the real Kueue: a job labelled with a queue runs as a Kueue pod
group; a job over the ClusterQueue's quota is Queued with no pod bound and runs once the quota
is free again; a restarted gang queues again as a group of its own; a job Kueue preempts for a
higher-priority one is disrupted (not charged a restart) and queues again."""

from __future__ import annotations

import subprocess
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_devcluster.layout import Layout
from llmjob_operator.render import (
    KUEUE_ADMISSION_GATE,
    KUEUE_POD_GROUP_LABEL,
    KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    JobRef,
    pod_group_name,
)
from tests.conftest import container_logs
from tests.integration.jobs import Jobs, condition, standin_job
from tests.integration.kueue_queues import Queues
from tests.integration.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def queued_job(name: str, venv_bin: str, queue: str, steps: int) -> dict[str, Any]:
    body = standin_job(name, venv_bin, gpusPerWorker=1, standin={"steps": steps})
    body["metadata"]["labels"] = {KUEUE_QUEUE_LABEL: queue}
    return body


def arrival_to_admission_and_running(jobs: Jobs, queues: Queues, name: str) -> str:
    """Seconds from a job's creation to Kueue's admission of its first attempt and to Running
    (whole seconds: the API's timestamps)."""
    job = jobs.get(name)
    created = datetime.fromisoformat(job["metadata"]["creationTimestamp"])
    ref = JobRef(name, jobs.namespace, job["metadata"]["uid"])
    admitted = queues.workload_condition(pod_group_name(ref, 1), "Admitted")
    assert admitted is not None
    at = datetime.fromisoformat(admitted["lastTransitionTime"])
    running = datetime.fromisoformat(job["status"]["runningTime"])
    return (
        f"admitted {(at - created).total_seconds():.0f} s after arrival, "
        f"running {(running - created).total_seconds():.0f} s after"
    )


def pods(api_client: client.ApiClient, jobs: Jobs, name: str) -> list[dict[str, Any]]:
    return [kube.as_dict(api_client, pod) for pod in jobs.pods(name)]


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


def test_a_job_over_the_quota_is_queued_unbound_and_runs_when_the_first_finishes(
    api_client: client.ApiClient,
    kueue_namespace: str,
    queues: Queues,
    llmjob_operator: OperatorProcess,
    venv_bin: str,
    kubectl: list[str],
) -> None:
    queue = queues.create(quota={"nvidia.com/gpu": "2"})  # one 2-worker job of 1 GPU each
    jobs = Jobs(api_client, kueue_namespace)
    # Long enough for the operator to read Kueue's reason for the second (every 30 s).
    jobs.create(queued_job("first", venv_bin, queue, steps=45))
    jobs.wait_phase("first", "Running", timeout=90)
    jobs.create(queued_job("second", venv_bin, queue, steps=2))

    jobs.wait_phase("second", "Queued", timeout=60)
    # The gate's reason first, then Kueue's own, read from the group's Workload.
    queued = jobs.wait(
        "second",
        lambda s: (c := condition(s, "Queued")) is not None and c["reason"] != "SchedulingGated",
        timeout=60,
        what="Kueue's reason in the Queued condition",
    )
    waiting = condition(queued, "Queued")
    assert waiting is not None and waiting["status"] == "True"
    assert KUEUE_ADMISSION_GATE in waiting["message"]
    phase_column = subprocess.run(
        [*kubectl, "get", "llmjob", "second", "-n", kueue_namespace, "--no-headers"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert phase_column == "Queued"
    for pod in pods(api_client, jobs, "second"):
        assert KUEUE_ADMISSION_GATE in [gate["name"] for gate in pod["spec"]["schedulingGates"]]
        assert "nodeName" not in pod["spec"]
    assert jobs.status("first")["phase"] == "Running"
    second = JobRef("second", kueue_namespace, jobs.get("second")["metadata"]["uid"])
    reserved = queues.workload_condition(pod_group_name(second, 1), "QuotaReserved")
    assert reserved is not None and reserved["status"] == "False"
    assert waiting["reason"] == reserved["reason"]
    assert waiting["message"].endswith(f": {reserved['message']}")

    first_pods = pods(api_client, jobs, "first")
    group = {pod["metadata"]["labels"][KUEUE_POD_GROUP_LABEL] for pod in first_pods}
    assert len(group) == 1 and len(first_pods) == 2
    for pod in first_pods:
        assert pod["metadata"]["labels"][KUEUE_QUEUE_LABEL] == queue
        assert pod["metadata"]["annotations"][KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION] == "2"

    jobs.wait_phase("first", "Succeeded", timeout=90)
    done = jobs.wait_phase("second", "Succeeded", timeout=90)
    admitted = condition(done, "Queued")
    assert admitted is not None and (admitted["status"], admitted["reason"]) == (
        "False",
        "Admitted",
    )
    assert done["attempt"] == 1 and done["restarts"] == 0
    first_finished = max(terminated(pod)["finishedAt"] for pod in pods(api_client, jobs, "first"))
    second_started = min(terminated(pod)["startedAt"] for pod in pods(api_client, jobs, "second"))
    assert second_started >= first_finished
    for name in ("first", "second"):
        print(f"figures: {name}: {arrival_to_admission_and_running(jobs, queues, name)}")


def test_a_restarted_gang_queues_again_as_its_attempts_own_pod_group(
    api_client: client.ApiClient,
    kueue_namespace: str,
    queues: Queues,
    llmjob_operator: OperatorProcess,
    venv_bin: str,
) -> None:
    queue = queues.create(quota={"nvidia.com/gpu": "2"})
    jobs = Jobs(api_client, kueue_namespace)
    body = queued_job("flaky", venv_bin, queue, steps=3)
    body["spec"]["env"] += [{"name": "STANDIN_FAIL", "value": "1:1:1:1"}]  # worker 1, attempt 1
    jobs.create(body)
    done = jobs.wait_phase("flaky", "Succeeded", timeout=120)
    assert done["attempt"] == 2 and done["restarts"] == 1
    flaky = JobRef("flaky", kueue_namespace, jobs.get("flaky")["metadata"]["uid"])
    # Attempt 2 queued as a group of its own, was admitted, and its Workload finished.
    admitted = condition(done, "Queued")
    assert admitted is not None and admitted["reason"] == "Admitted"
    assert admitted["message"].startswith("attempt 2 admitted")
    second = queues.workload_condition(pod_group_name(flaky, 2), "Finished")
    assert second is not None and second["status"] == "True"
    groups = {
        p["metadata"]["labels"][KUEUE_POD_GROUP_LABEL] for p in pods(api_client, jobs, "flaky")
    }
    assert groups == {pod_group_name(flaky, 2)}
    # Attempt 1's Workload finished when its pods ended (not retried in their group), which let
    # them go so that attempt 2's could be made; it went with them (they own it).
    first = queues.workload(pod_group_name(flaky, 1))
    assert first is None or any(
        c["type"] == "Finished" and c["status"] == "True" for c in first["status"]["conditions"]
    )


def test_a_higher_priority_job_preempts_a_running_one_which_queues_again_uncounted(
    api_client: client.ApiClient,
    kueue_namespace: str,
    queues: Queues,
    priority_classes: dict[str, str],
    llmjob_operator: OperatorProcess,
    venv_bin: str,
    devcluster: Layout,
) -> None:
    queue = queues.create(
        quota={"nvidia.com/gpu": "2"}, preemption={"withinClusterQueue": "LowerPriority"}
    )
    jobs = Jobs(api_client, kueue_namespace)
    low = queued_job("low", venv_bin, queue, steps=60)
    low["spec"]["scheduling"] = {"priorityClassName": priority_classes["low"]}
    jobs.create(low)
    jobs.wait("low", lambda s: (s.get("progress") or {}).get("step", 0) >= 2, timeout=90)
    high = queued_job("high", venv_bin, queue, steps=3)
    high["spec"]["scheduling"] = {"priorityClassName": priority_classes["high"]}
    jobs.create(high)

    # Kueue evicts the low group: its workers get SIGTERM (and checkpoint), the operator counts
    # a disruption, not a restart, and recreates the gang, gated, as attempt 2.
    requeued = jobs.wait(
        "low", lambda s: s.get("attempt") == 2 and s.get("phase") == "Queued", timeout=90
    )
    assert (requeued["restarts"], requeued["disruptions"]) == (0, 1)
    failure = requeued["lastFailure"]
    assert (failure["reason"], failure["counted"], failure["attempt"]) == ("Preempted", False, 1)
    log = container_logs(devcluster, kueue_namespace, "low-worker-0", "trainer")
    assert "SIGTERM at step" in log, log[-2000:]

    finished = jobs.wait_phase("high", "Succeeded", timeout=90)
    resumed = jobs.wait_phase("low", "Running", timeout=90)
    assert resumed["attempt"] == 2 and resumed["restarts"] == 0
    admitted = condition(resumed, "Queued")
    assert admitted is not None and admitted["message"].startswith("attempt 2 admitted")
    arrival = datetime.fromisoformat(jobs.get("high")["metadata"]["creationTimestamp"])

    def since(moment: str) -> str:
        # Whole seconds: creation and container start times have no finer grain.
        return f"{(datetime.fromisoformat(moment) - arrival).total_seconds():.0f} s"

    print(
        "figures: from the high job's arrival: "
        f"low evicted (seen) {since(failure['time'])}, "
        f"high running {since(finished['runningTime'])}, "
        f"high done {since(finished['completionTime'])}, "
        f"low re-admitted {since(admitted['lastTransitionTime'])}, "
        f"low running again {since(resumed['runningTime'])}"
    )


def test_admitted_workers_get_the_flavors_node_labels_and_tolerations_and_land_there(
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    kueue_namespace: str,
    queues: Queues,
    llmjob_operator: OperatorProcess,
    venv_bin: str,
) -> None:
    # The flavor is node llmjob-node-1: labelled for it and tainted so only the flavor's
    # tolerating pods may go there.
    node, key, value = "llmjob-node-1", "test.llmjob.dev/kueue-flavor", kueue_namespace[-5:]
    taint = {"key": key, "value": value, "effect": "NoSchedule"}
    original = kube.as_dict(api_client, core.read_node(node))
    core.patch_node(
        node,
        {
            "metadata": {"labels": {key: value}},
            "spec": {"taints": [*original["spec"].get("taints", []), taint]},
        },
    )
    try:
        queue = queues.create(
            quota={"nvidia.com/gpu": "2"},
            flavor={
                "nodeLabels": {key: value},
                "nodeTaints": [taint],
                "tolerations": [{**taint, "operator": "Equal"}],
            },
        )
        jobs = Jobs(api_client, kueue_namespace)
        jobs.create(queued_job("placed", venv_bin, queue, steps=2))
        jobs.wait_phase("placed", "Succeeded", timeout=90)
        for pod in pods(api_client, jobs, "placed"):
            assert pod["spec"]["nodeSelector"][key] == value
            assert {**taint, "operator": "Equal"} in pod["spec"]["tolerations"]
            assert pod["spec"]["nodeName"] == node
    finally:
        current = kube.as_dict(api_client, core.read_node(node))
        kept = [t for t in current["spec"].get("taints", []) if t.get("key") != key]
        core.patch_node(
            node, {"metadata": {"labels": {key: None}}, "spec": {"taints": kept or None}}
        )
