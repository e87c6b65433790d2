"""The cluster outlives a crash of its own API server, as a real one does: the node agent
retries every watch and its heartbeats like a kubelet, so the nodes are Ready again soon
after kube-apiserver is back and new pods run."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

import pytest
from kubernetes import client

from llmjob_devcluster import cluster, kube
from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE
from llmjob_devcluster.layout import Layout
from tests.conftest import read_pod, wait_for

pytestmark = pytest.mark.integration

DOWN_SECONDS = 20
# Leases are renewed every 2 s and watch retries back off to 8 s at most, so once the API
# server answers again both nodes post a fresh Ready heartbeat well within this.
RECOVERY_SECONDS = 30


def fresh_ready(
    api_client: client.ApiClient, core: client.CoreV1Api, node: str, since: str
) -> bool:
    """Ready=True with a heartbeat at or after `since` (whole-second RFC 3339 times)."""
    status = kube.as_dict(api_client, core.read_node(node))["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    return bool(ready["status"] == "True" and ready["lastHeartbeatTime"] >= since)


def test_nodes_and_pods_recover_after_the_api_server_is_killed(
    devcluster: Layout, api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    agent_log = devcluster.log_dir / "node-agent.log"
    log_offset = agent_log.stat().st_size

    cluster.restart(devcluster, "kube-apiserver", down_seconds=DOWN_SECONDS)
    back = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    back_at = time.monotonic()

    for node in devcluster.node_names:
        wait_for(
            functools.partial(fresh_ready, api_client, core, node, back),
            RECOVERY_SECONDS,
            f"{node} to post Ready after the API server came back",
        )
    print(f"both nodes Ready {time.monotonic() - back_at:.1f}s after kube-apiserver was back")
    retries = agent_log.read_bytes()[log_offset:].decode(errors="replace")
    for node in devcluster.node_names:
        assert f"node {node} heartbeat failed, retrying" in retries
        assert f"pod watch of {node}: retrying" in retries
    assert "service watch: retrying" in retries

    core.create_namespaced_pod(
        namespace,
        kube.model(
            client.V1Pod,
            {
                "metadata": {"name": "after-the-outage"},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": HOST_ENVIRONMENT_IMAGE, "command": ["true"]}
                    ],
                },
            },
        ),
    )
    wait_for(
        lambda: (
            (read_pod(api_client, core, "after-the-outage", namespace) or {})
            .get("status", {})
            .get("phase")
            == "Succeeded"
        ),
        60,
        "a pod created after the outage to run to completion",
    )
