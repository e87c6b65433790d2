"""The real Kueue on the local cluster: its webhook gates a plain pod group's pods, it admits
the group under a ClusterQueue's quota and lifts the gates; a second group over the quota stays
gated, unbound, until the first has finished."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE
from tests.conftest import read_pod, wait_for
from tests.integration.kueue_queues import Queues

pytestmark = pytest.mark.integration

# Kueue's plain pod group API, as its documentation names it.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_ADMISSION_GATE = "kueue.x-k8s.io/admission"


def group_pod(name: str, group: str, queue: str, seconds: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {KUEUE_QUEUE_LABEL: queue, KUEUE_POD_GROUP_LABEL: group},
            "annotations": {KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION: "2"},
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": HOST_ENVIRONMENT_IMAGE,
                    "command": ["sleep", str(seconds)],
                    "resources": {"requests": {"cpu": "500m"}},
                }
            ],
        },
    }


def gates(pod: dict[str, Any]) -> list[str]:
    return [gate["name"] for gate in pod["spec"].get("schedulingGates") or []]


def test_kueue_admits_a_pod_group_under_quota_and_keeps_the_next_one_gated(
    api_client: client.ApiClient, core: client.CoreV1Api, kueue_namespace: str, queues: Queues
) -> None:
    namespace = kueue_namespace
    queue = queues.create(quota={"cpu": "1"})  # one group of two 500m pods

    def pods(group: str) -> list[dict[str, Any] | None]:
        return [read_pod(api_client, core, f"{group}-{i}", namespace) for i in range(2)]

    def all_in(group: str, phase: str) -> list[dict[str, Any]] | None:
        found = [p for p in pods(group) if p and p["status"].get("phase") == phase]
        return found if len(found) == 2 else None

    for i in range(2):
        created = core.create_namespaced_pod(
            namespace, kube.model(client.V1Pod, group_pod(f"first-{i}", "first", queue, 8))
        )
        # Kueue's webhook gated it as the API server created it.
        assert KUEUE_ADMISSION_GATE in gates(kube.as_dict(api_client, created))
    running = wait_for(
        lambda: all_in("first", "Running"),
        timeout=60,
        what="the first group admitted and running",
    )
    assert all(not gates(p) and p["spec"].get("nodeName") for p in running)
    admitted = queues.workload_condition("first", "Admitted")
    assert admitted is not None and admitted["status"] == "True"

    for i in range(2):
        core.create_namespaced_pod(
            namespace, kube.model(client.V1Pod, group_pod(f"second-{i}", "second", queue, 1))
        )
    pending = wait_for(
        lambda: (
            (c := queues.workload_condition("second", "QuotaReserved"))
            and c["status"] == "False"
            and c
        ),
        timeout=30,
        what="the second group's Workload, pending for quota",
    )
    assert "insufficient" in pending["message"].lower(), pending
    # While the first group holds the quota, the second's pods wait unbound behind the gate.
    assert all_in("first", "Running")
    for pod in pods("second"):
        assert pod is not None
        assert KUEUE_ADMISSION_GATE in gates(pod)
        assert not pod["spec"].get("nodeName")

    done = wait_for(
        lambda: all_in("second", "Succeeded"),
        timeout=90,
        what="the second group admitted once the first finished, and done",
    )
    first_finished = max(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
        for p in pods("first")
        if p
    )
    second_started = min(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"] for p in done
    )
    assert second_started >= first_finished
    finished = queues.workload_condition("first", "Finished")
    assert finished is not None and finished["status"] == "True"
