"""Losing a node: the real node-lifecycle controller notices and evicts its pods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE
from llmjob_devcluster.layout import Layout
from tests.conftest import read_pod, wait_for

pytestmark = pytest.mark.integration

NODE = "llmjob-node-1"


def ready_status(api_client: client.ApiClient, core: client.CoreV1Api) -> str:
    node = kube.as_dict(api_client, core.read_node(NODE))
    return str(next(c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"))


@pytest.fixture
def lost_marker(
    devcluster: Layout, api_client: client.ApiClient, core: client.CoreV1Api
) -> Iterator[Path]:
    marker = devcluster.control_dir / f"lost-{NODE}"
    yield marker
    marker.unlink(missing_ok=True)

    def healthy_again() -> bool:
        node = kube.as_dict(api_client, core.read_node(NODE))
        return ready_status(api_client, core) == "True" and not node["spec"].get("taints")

    wait_for(healthy_again, 60, f"{NODE} to be Ready and untainted again")


def test_a_lost_node_goes_not_ready_and_its_pods_are_evicted(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str, lost_marker: Path
) -> None:
    core.create_namespaced_pod(
        namespace,
        kube.model(
            client.V1Pod,
            {
                "metadata": {"name": "doomed"},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": NODE},
                    "containers": [
                        {
                            "name": "main",
                            "image": HOST_ENVIRONMENT_IMAGE,
                            "command": ["sleep", "3600"],
                        }
                    ],
                },
            },
        ),
    )
    wait_for(
        lambda: (
            (read_pod(api_client, core, "doomed", namespace) or {}).get("status", {}).get("phase")
            == "Running"
        ),
        60,
        "the pod to run",
    )

    lost_marker.touch()

    wait_for(
        lambda: ready_status(api_client, core) == "Unknown", 60, f"{NODE} to go NotReady (Unknown)"
    )

    def evicted() -> kube.Obj | None:
        pod = read_pod(api_client, core, "doomed", namespace)
        return pod if pod is not None and pod["metadata"].get("deletionTimestamp") else None

    pod = wait_for(evicted, 60, "the taint eviction of the pod")
    conditions = {c["type"]: c for c in pod["status"].get("conditions") or []}
    assert conditions["DisruptionTarget"]["reason"] == "DeletionByTaintManager"

    lost_marker.unlink()
    # Back on its feet, the node's agent finishes the eviction the way a kubelet does.
    wait_for(
        lambda: read_pod(api_client, core, "doomed", namespace) is None, 60, "the pod to be gone"
    )
