"""The operator's gangs under the real Kueue: a job labelled with a queue runs as a Kueue pod
group; a job over the ClusterQueue's quota is Queued with no pod bound and runs once the quota
is free again."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_operator.render import (
    KUEUE_ADMISSION_GATE,
    KUEUE_POD_GROUP_LABEL,
    KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    JobRef,
    pod_group_name,
)
from tests.integration.jobs import Jobs, condition, standin_job
from tests.integration.kueue_queues import Queues
from tests.integration.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def queued_job(name: str, venv_bin: str, queue: str, steps: int) -> dict[str, Any]:
    body = standin_job(name, venv_bin, gpusPerWorker=1, standin={"steps": steps})
    body["metadata"]["labels"] = {KUEUE_QUEUE_LABEL: queue}
    return body


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
    jobs.create(queued_job("first", venv_bin, queue, steps=8))
    jobs.wait_phase("first", "Running", timeout=90)
    jobs.create(queued_job("second", venv_bin, queue, steps=2))

    queued = jobs.wait_phase("second", "Queued", timeout=60)
    waiting = condition(queued, "Queued")
    assert waiting is not None
    assert (waiting["status"], waiting["reason"]) == ("True", "SchedulingGated")
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
