"""Simulated GPU nodes on the local cluster (KWOK), for scale: an opt-in, `make kwok`
(python -m llmjob_devcluster.kwok up [--nodes N] | down | status) or `kwok.up(layout, nodes)`.

The real KWOK controller, built from the Go module proxy by dev/build-scale.sh (cached), runs as
a host process against the cluster's real API server, beside the node agent's stand-in nodes:
- it manages only the nodes it is given (label NODE_LABEL), never the stand-in nodes; they are
  tainted (TOLERATION) so that nothing lands there unless it says so;
- the nodes' and pods' lives are KWOK's upstream Stages (kustomize/stage of the same module):
  node-initialize and node-heartbeat-with-lease; pod-ready (Pending -> Running at once),
  pod-delete; and pod-container-running-failed, the failure a test or a benchmark injects by
  labelling a running pod (fail_pod): its container ends with the exit code it is given and the
  pod Failed. No stage completes a pod: a simulated trainer runs until it fails or is deleted;
- KWOK pods run nothing: no process, no /metrics, and their IPs (from POD_CIDR) lead nowhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from llmjob_devcluster import cluster, hostmanager, kube, processes, scalebuild
from llmjob_devcluster.layout import Layout

PROCESS = "kwok"
NODE_LABEL = "type"
NODE_SELECTOR = {NODE_LABEL: "kwok"}
TAINT_KEY = "kwok.x-k8s.io/node"
TOLERATION = {"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
GPU_RESOURCE = "nvidia.com/gpu"
NODE_PREFIX = "kwok-node-"
# Room for every pod of the biggest benchmark (1,000 jobs x 8 workers) and then some.
POD_CIDR = "10.64.0.0/14"
# Upstream stage files, relative to the build's kwok-stages/ (kustomize/stage of KWOK).
STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-delete.yaml",
    "pod/chaos/pod-container-running-failed.yaml",
)
FAIL_STAGE = "pod-container-running-failed.stage.kwok.x-k8s.io"
# KWOK's workers that play the pods' stages (upstream default 4). A stage job is keyed by the
# pod's name, and pod-delete deletes by name with no UID precondition (kwok v0.8.0,
# pod_controller.go deleteResource): once 4 workers fall minutes behind, as they did at 1,000
# jobs, a delete meant for one attempt's pod lands on the next attempt's pod of the same name.
# A kubelet deletes with a UID precondition; enough workers keep KWOK's queue short.
POD_STAGE_WORKERS = 32


def lease_seconds(node_grace_seconds: int) -> int:
    """The fake nodes' Lease duration for the cluster's node-monitor grace period: as a
    kubelet's 40 s against upstream's 50 s grace, at least 4 s."""
    return max(4, node_grace_seconds * 4 // 5)


def state_dir(layout: Layout) -> Path:
    return layout.state_dir / "kwok"


def node(name: str, gpus: int) -> dict[str, Any]:
    """A fake GPU node as a kubelet would register it (status with the create: KWOK's stages
    keep what capacity they find)."""
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {**NODE_SELECTOR, "kubernetes.io/hostname": name},
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"taints": [{"key": TAINT_KEY, "value": "fake", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def _selector() -> str:
    return ",".join(f"{k}={v}" for k, v in NODE_SELECTOR.items())


def _nodes(layout: Layout) -> list[dict[str, Any]]:
    listed = hostmanager.kubectl(layout, "get", "nodes", f"-l={_selector()}", "-o=json")
    items: list[dict[str, Any]] = json.loads(listed)["items"]
    return items


def _ready(node_body: dict[str, Any]) -> bool:
    conditions = (node_body.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def ensure_nodes(layout: Layout, count: int, gpus_per_node: int = 8) -> None:
    """Exactly `count` KWOK nodes (kwok-node-0 ...), each with `gpus_per_node` GPUs; waits until
    every one is Ready."""
    existing = {n["metadata"]["name"] for n in _nodes(layout)}
    wanted = {f"{NODE_PREFIX}{i}" for i in range(count)}
    missing = [node(name, gpus_per_node) for name in sorted(wanted - existing)]
    if missing:
        items = json.dumps({"apiVersion": "v1", "kind": "List", "items": missing})
        hostmanager.kubectl(layout, "create", "-f", "-", stdin=items)
    if existing - wanted:
        # One deletecollection request: kubectl deletes one node per request, which took 200 s
        # for 1,000 nodes here. The hostname label is the name (node() sets it); `notin` also
        # matches nodes without it.
        keep = f",kubernetes.io/hostname notin ({','.join(sorted(wanted))})" if wanted else ""
        core = client.CoreV1Api(kube.api_client(layout.kubeconfig))
        core.delete_collection_node(label_selector=_selector() + keep)
    deadline = time.monotonic() + 120
    while True:
        ready = sum(_ready(n) for n in _nodes(layout))
        if ready == count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"devcluster: {ready}/{count} KWOK nodes Ready after 120s")
        time.sleep(0.5)


def fail_pod(core: client.CoreV1Api, namespace: str, name: str, exit_code: int = 1) -> None:
    """Makes a running KWOK pod's container exit with `exit_code` (the pod goes Failed) at once."""
    core.patch_namespaced_pod(
        name,
        namespace,
        {
            "metadata": {
                "labels": {FAIL_STAGE: "true"},
                "annotations": {
                    f"{FAIL_STAGE}/exit-code": str(exit_code),
                    f"{FAIL_STAGE}/delay": "0s",
                    f"{FAIL_STAGE}/jitter-delay": "0s",
                },
            }
        },
    )


def _write_config(layout: Layout, built: Path) -> Path:
    """KWOK's configuration and its stages, one multi-document file for `--config`."""
    path = state_dir(layout) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        # A configuration that KWOK reads from a file gets none of its defaults (v0.8.0 applies
        # them only when there is no file): the other workers at upstream's values.
        "options": {
            "podPlayStageParallelism": POD_STAGE_WORKERS,
            "nodePlayStageParallelism": 4,
            "nodeLeaseParallelism": 4,
            "podsOnNodeSyncParallelism": 1,
            "enablePodsOnNodeSyncListPager": True,
        },
    }
    stages = [(built / "kwok-stages" / stage).read_text().strip() for stage in STAGES]
    documents = [json.dumps(options), *stages]
    path.write_text("\n---\n".join(documents) + "\n")
    return path


def is_healthy(layout: Layout) -> bool:
    return hostmanager.answers_ok(f"http://127.0.0.1:{layout.kwok_server_port}/healthz")


def is_running(layout: Layout) -> bool:
    return processes.running_pid(layout.pid_dir, PROCESS) is not None and is_healthy(layout)


def up(layout: Layout, nodes: int = 4, gpus_per_node: int = 8) -> None:
    """Starts KWOK on the running cluster (idempotent) with exactly `nodes` fake nodes."""
    started_at = time.monotonic()
    built = scalebuild.build()
    kwok_config = _write_config(layout, built)
    if not is_running(layout):
        processes.stop(layout.pid_dir, PROCESS, grace=10)
        binary = built / "bin" / "kwok"
        argv = [
            str(binary),
            f"--kubeconfig={layout.kubeconfig}",
            f"--config={kwok_config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-label-selector={NODE_LABEL}={NODE_SELECTOR[NODE_LABEL]}",
            f"--server-address=127.0.0.1:{layout.kwok_server_port}",
            f"--cidr={POD_CIDR}",
            # KWOK renews every quarter of the lease, well inside the controller manager's grace.
            f"--node-lease-duration-seconds={lease_seconds(cluster.node_monitor_grace_seconds())}",
            # A line per patched pod at INFO: gigabytes of log in a 1,000-job benchmark.
            "--v=WARN",
        ]
        process = processes.start(
            layout.pid_dir, layout.log_dir, PROCESS, argv, dict(os.environ), str(binary)
        )
        deadline = time.monotonic() + 60
        while not is_healthy(layout):
            if process.poll() is not None:
                raise SystemExit(f"devcluster: kwok exited; see {layout.log_dir / 'kwok.log'}")
            if time.monotonic() > deadline:
                raise SystemExit("devcluster: kwok not healthy after 60s")
            time.sleep(0.2)
    ensure_nodes(layout, nodes, gpus_per_node)
    cluster.log(f"kwok with {nodes} nodes up in {time.monotonic() - started_at:.1f}s")


def down(layout: Layout) -> None:
    """Deletes the fake nodes and stops KWOK. Pods still bound to them go with them, deleted by
    the pod garbage collector within about a minute (51 s measured)."""
    # Whether KWOK runs or not: a node left over would count as Ready the next time it does.
    if cluster.is_healthy(layout, "kube-apiserver"):
        ensure_nodes(layout, 0)
    processes.stop(layout.pid_dir, PROCESS, grace=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_args()
    layout = Layout.from_env()
    if args.command == "up":
        up(layout, args.nodes, args.gpus_per_node)
    elif args.command == "down":
        down(layout)
    else:
        running = is_running(layout)
        print(f"kwok {'healthy' if running else 'stopped'}")
        if not running:
            sys.exit(1)


if __name__ == "__main__":
    main()
