"""The nodes of the local cluster and the real scheduler placing pods on them."""

from __future__ import annotations

import pytest
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE
from tests.conftest import read_pod, wait_for

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"


def ready_nodes(api_client: client.ApiClient, core: client.CoreV1Api) -> list[kube.Obj]:
    nodes = kube.as_dict(api_client, core.list_node())["items"]
    return [
        node
        for node in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    ]


def test_two_nodes_are_ready_with_gpu_capacity(
    api_client: client.ApiClient, core: client.CoreV1Api
) -> None:
    wait_for(lambda: len(ready_nodes(api_client, core)) >= 2, 30, "2 Ready nodes")
    nodes = ready_nodes(api_client, core)
    assert len(nodes) == 2
    for node in nodes:
        assert int(node["status"]["capacity"][GPU]) > 0
        assert node["status"]["allocatable"][GPU] == node["status"]["capacity"][GPU]
        assert {"cpu", "memory", "pods"} <= node["status"]["capacity"].keys()


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    most = max(int(node["status"]["capacity"][GPU]) for node in ready_nodes(api_client, core))
    too_many = str(most + 1)
    pod = {
        "metadata": {"name": "greedy"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": HOST_ENVIRONMENT_IMAGE,
                    "command": ["true"],
                    "resources": {"requests": {GPU: too_many}, "limits": {GPU: too_many}},
                }
            ]
        },
    }
    core.create_namespaced_pod(namespace, kube.model(client.V1Pod, pod))

    def unschedulable() -> kube.Obj | None:
        current = read_pod(api_client, core, "greedy", namespace)
        assert current is not None
        for condition in (current.get("status") or {}).get("conditions") or []:
            if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
                found: kube.Obj = condition
                return found
        return None

    condition = wait_for(unschedulable, 30, "the scheduler to give up on the pod")
    assert condition["status"] == "False"
    assert f"Insufficient {GPU}" in condition["message"]
    current = read_pod(api_client, core, "greedy", namespace)
    assert current is not None
    assert current["status"]["phase"] == "Pending"
    assert not current["spec"].get("nodeName")
