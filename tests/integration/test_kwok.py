"""KWOK's simulated GPU nodes on the local cluster (kwok.py), under `make bench-scale` and its
smoke test: pods bound to them go Running and stay Ready for as long as they run (the nodes'
Leases keep them alive to the node lifecycle controller), a failure injected into one ends its
container with the exit code given, a deleted pod goes at once, and resizing the node set is
one request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from llmjob_devcluster import cluster, kube, kwok
from llmjob_devcluster.layout import Layout
from tests.apiserver_requests import count, snapshot
from tests.conftest import read_pod, wait_for

pytestmark = pytest.mark.integration

NODES = 4
GPUS_PER_POD = 4  # two pods fill a node: the scheduler has to use every node
# Longer than the node lifecycle controller's grace period plus one renewal of KWOK's default
# Lease (40 s, renewed every 10 s): a node whose Lease is renewed too rarely goes Unknown in
# this window, and the pods on it Ready=False for good.
STEADY_SECONDS = cluster.node_monitor_grace_seconds() + 7


@pytest.fixture(scope="module")
def kwok_nodes(devcluster: Layout) -> Iterator[Layout]:
    kwok.up(devcluster, nodes=NODES)
    yield devcluster
    kwok.down(devcluster)


def kwok_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": kwok.NODE_SELECTOR,
            "tolerations": [kwok.TOLERATION],
            "containers": [
                {
                    "name": "trainer",
                    "image": "devcluster.local/never-pulled:latest",
                    "resources": {"limits": {kwok.GPU_RESOURCE: str(GPUS_PER_POD)}},
                }
            ],
        },
    }


def is_ready(obj: dict[str, Any] | None) -> bool:
    """A pod's or a node's Ready condition is True."""
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_pods_run_stay_ready_fail_on_request_and_go_at_once(
    kwok_nodes: Layout, api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    names = [f"worker-{i}" for i in range(NODES * 8 // GPUS_PER_POD)]
    for name in names:
        core.create_namespaced_pod(namespace, kwok_pod(name))

    def pods() -> list[dict[str, Any] | None]:
        return [read_pod(api_client, core, name, namespace) for name in names]

    def all_running_and_ready() -> bool:
        return all(p and p["status"].get("phase") == "Running" and is_ready(p) for p in pods())

    wait_for(all_running_and_ready, 30, "every pod Running and Ready on a KWOK node")
    nodes = {p["spec"]["nodeName"] for p in pods() if p}
    assert nodes == {f"{kwok.NODE_PREFIX}{i}" for i in range(NODES)}

    # Polled for the whole window: a flap shows as a pod that is no longer Ready.
    steady_until = time.monotonic() + STEADY_SECONDS
    while time.monotonic() < steady_until:
        assert all_running_and_ready(), "a pod lost Running or Ready while its node idled"
        time.sleep(1)
    not_ready = core.list_namespaced_event(namespace, field_selector="reason=NodeNotReady")
    assert not not_ready.items

    failing, deleted, *running = names
    kwok.fail_pod(core, namespace, failing, exit_code=7)

    def failed() -> dict[str, Any] | None:
        pod = read_pod(api_client, core, failing, namespace)
        return pod if pod and pod["status"].get("phase") == "Failed" else None

    terminated = wait_for(failed, 10, "the failed pod")["status"]["containerStatuses"][0]["state"]
    assert terminated["terminated"]["exitCode"] == 7

    core.delete_namespaced_pod(deleted, namespace)
    wait_for(
        lambda: read_pod(api_client, core, deleted, namespace) is None, 10, "the deleted pod gone"
    )
    assert all(is_ready(read_pod(api_client, core, name, namespace)) for name in running)


def test_resizing_the_node_set_is_one_request_and_waits_for_readiness(
    kwok_nodes: Layout, api_client: client.ApiClient, core: client.CoreV1Api
) -> None:
    def kwok_nodes_ready() -> list[str]:
        selector = ",".join(f"{k}={v}" for k, v in kwok.NODE_SELECTOR.items())
        listed = kube.as_dict(api_client, core.list_node(label_selector=selector))["items"]
        return sorted(n["metadata"]["name"] for n in listed if is_ready(n))

    before = snapshot(api_client)
    kwok.ensure_nodes(kwok_nodes, 2)
    delta = snapshot(api_client) - before
    assert kwok_nodes_ready() == [f"{kwok.NODE_PREFIX}0", f"{kwok.NODE_PREFIX}1"]
    # Two nodes gone in one request (the server counts a collection's delete as a DELETE too).
    assert count(delta, verbs={"DELETE", "DELETECOLLECTION"}, resource="nodes") == 1

    kwok.ensure_nodes(kwok_nodes, NODES)
    assert len(kwok_nodes_ready()) == NODES
