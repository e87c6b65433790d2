"""Pods run by the node agent: volumes, downward API, exit codes, restarts, termination."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE
from llmjob_devcluster.layout import Layout
from tests.conftest import container_logs, read_pod, wait_for

pytestmark = pytest.mark.integration

# The node agent runs these pods in the host environment (the opt-in of fast tests).
IMAGE = HOST_ENVIRONMENT_IMAGE


def create(core: client.CoreV1Api, namespace: str, manifest: kube.Obj) -> None:
    kind = manifest["kind"]
    if kind == "Pod":
        core.create_namespaced_pod(namespace, kube.model(client.V1Pod, manifest))
    elif kind == "ConfigMap":
        core.create_namespaced_config_map(namespace, kube.model(client.V1ConfigMap, manifest))
    elif kind == "PersistentVolumeClaim":
        claim = kube.model(client.V1PersistentVolumeClaim, manifest)
        core.create_namespaced_persistent_volume_claim(namespace, claim)
    else:
        raise ValueError(kind)


def phase_is(
    api_client: client.ApiClient, core: client.CoreV1Api, name: str, namespace: str, *phases: str
) -> kube.Obj | None:
    pod = read_pod(api_client, core, name, namespace)
    return pod if pod is not None and pod.get("status", {}).get("phase") in phases else None


def test_pod_reads_config_and_downward_api_writes_claim_and_fails_with_its_exit_code(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    create(
        core,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"greeting": "hello"},
        },
    )
    create(
        core,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "results"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    script = (
        'echo "$(cat /etc/settings/greeting) from $POD_NAME as $(id -u)" > /results/out.txt; exit 3'
    )
    create(
        core,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "writer"},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {
                    "runAsUser": 1000,
                    "runAsGroup": 1000,
                    "fsGroup": 2000,
                    "runAsNonRoot": True,
                },
                "containers": [
                    {
                        "name": "main",
                        "image": IMAGE,
                        "command": ["sh", "-c", script],
                        "env": [
                            {
                                "name": "POD_NAME",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                            }
                        ],
                        "volumeMounts": [
                            {"name": "settings", "mountPath": "/etc/settings"},
                            {"name": "results", "mountPath": "/results"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "settings", "configMap": {"name": "settings"}},
                    {"name": "results", "persistentVolumeClaim": {"claimName": "results"}},
                ],
            },
        },
    )

    pod = wait_for(
        lambda: phase_is(api_client, core, "writer", namespace, "Failed", "Succeeded"),
        60,
        "the pod to end",
    )

    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    claim = kube.as_dict(
        api_client, core.read_namespaced_persistent_volume_claim("results", namespace)
    )
    volume = kube.as_dict(api_client, core.read_persistent_volume(claim["spec"]["volumeName"]))
    written = Path(volume["spec"]["hostPath"]["path"]) / "out.txt"
    assert written.read_text() == "hello from writer as 1000\n"
    assert written.stat().st_gid == 2000


def test_deleting_a_running_pod_sends_sigterm_then_sigkill_after_the_grace_period(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str, devcluster: Layout
) -> None:
    # Ignores SIGTERM (after saying so), so only SIGKILL can end it.
    script = (
        "import signal, sys, time\n"
        "def term(*_):\n"
        "    print('got SIGTERM', flush=True)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "print('started', flush=True)\n"
        "while True:\n"
        "    time.sleep(0.1)\n"
    )
    grace = 3
    create(
        core,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "stubborn"},
            "spec": {
                "terminationGracePeriodSeconds": grace,
                "containers": [
                    {"name": "main", "image": IMAGE, "command": ["python", "-c", script]}
                ],
            },
        },
    )
    wait_for(
        lambda: "started" in container_logs(devcluster, namespace, "stubborn", "main"), 60, "start"
    )

    deleted_at = time.monotonic()
    core.delete_namespaced_pod("stubborn", namespace)
    wait_for(
        lambda: read_pod(api_client, core, "stubborn", namespace) is None,
        grace + 15,
        "the pod to go",
    )
    took = time.monotonic() - deleted_at

    assert "got SIGTERM" in container_logs(devcluster, namespace, "stubborn", "main")
    assert grace - 0.5 <= took <= grace + 10, took


def test_a_pod_that_handles_sigterm_ends_before_its_grace_period(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str, devcluster: Layout
) -> None:
    script = "trap 'echo bye; exit 0' TERM; echo started; while true; do sleep 0.1; done"
    create(
        core,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "polite"},
            "spec": {
                "terminationGracePeriodSeconds": 30,
                "containers": [{"name": "main", "image": IMAGE, "command": ["sh", "-c", script]}],
            },
        },
    )
    wait_for(
        lambda: "started" in container_logs(devcluster, namespace, "polite", "main"), 60, "start"
    )
    deleted_at = time.monotonic()
    core.delete_namespaced_pod("polite", namespace)
    wait_for(lambda: read_pod(api_client, core, "polite", namespace) is None, 30, "the pod to go")
    assert time.monotonic() - deleted_at < 10
    assert "bye" in container_logs(devcluster, namespace, "polite", "main")


def test_restart_policy_on_failure_restarts_until_the_container_succeeds(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    # Fails on the first run, succeeds on the second: the emptyDir outlives restarts.
    script = "if [ -e /scratch/ran ]; then exit 0; fi; touch /scratch/ran; exit 1"
    create(
        core,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "retry"},
            "spec": {
                "restartPolicy": "OnFailure",
                "initContainers": [
                    {
                        "name": "init",
                        "image": IMAGE,
                        "command": ["sh", "-c", "echo init > /scratch/init"],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    }
                ],
                "containers": [
                    {
                        "name": "main",
                        "image": IMAGE,
                        "command": ["sh", "-c", script],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    }
                ],
                "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
            },
        },
    )
    pod = wait_for(
        lambda: phase_is(api_client, core, "retry", namespace, "Succeeded", "Failed"), 60, "success"
    )
    assert pod["status"]["phase"] == "Succeeded"
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert status["state"]["terminated"]["exitCode"] == 0
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_readiness_follows_exec_and_tcp_probes_and_kubectl_logs_reads_the_container(
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    kubectl: list[str],
    tmp_path: Path,
) -> None:
    # Both containers become ready only once the test opens the gate (a file on a hostPath
    # volume): "gate" through an exec probe, "server" through a TCP probe on its pod IP.
    # Pods share the host's network namespace, where a listener on 0.0.0.0 answers for every
    # pod IP: the server's port must be one that nothing on the machine listens on.
    with socket.create_server(("0.0.0.0", 0)) as probe_socket:
        port = probe_socket.getsockname()[1]
    server = (
        "import os, socket, time\n"
        "print('waiting for the gate', flush=True)\n"
        "while not os.path.exists('/gate/open'):\n"
        "    time.sleep(0.1)\n"
        f"listener = socket.create_server((os.environ['POD_IP'], {port}))\n"
        "print('serving', flush=True)\n"
        "while True:\n"
        "    listener.accept()[0].close()\n"
    )
    gate_volume = [{"name": "gate", "mountPath": "/gate"}]
    create(
        core,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "gated"},
            "spec": {
                "containers": [
                    {
                        "name": "gate",
                        "image": IMAGE,
                        "command": ["sleep", "3600"],
                        "volumeMounts": gate_volume,
                        "readinessProbe": {
                            "exec": {"command": ["test", "-e", "/gate/open"]},
                            "periodSeconds": 1,
                        },
                    },
                    {
                        "name": "server",
                        "image": IMAGE,
                        "command": ["python", "-c", server],
                        "ports": [{"name": "service", "containerPort": port}],
                        "env": [
                            {
                                "name": "POD_IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                            }
                        ],
                        "volumeMounts": gate_volume,
                        "readinessProbe": {"tcpSocket": {"port": "service"}, "periodSeconds": 1},
                    },
                ],
                "volumes": [{"name": "gate", "hostPath": {"path": str(tmp_path)}}],
            },
        },
    )

    def readiness() -> dict[str, bool]:
        pod = read_pod(api_client, core, "gated", namespace)
        assert pod is not None
        return {s["name"]: s["ready"] for s in pod["status"].get("containerStatuses") or []}

    wait_for(lambda: phase_is(api_client, core, "gated", namespace, "Running"), 60, "Running")
    time.sleep(3)  # several probe periods
    assert readiness() == {"gate": False, "server": False}

    (tmp_path / "open").touch()
    wait_for(lambda: readiness() == {"gate": True, "server": True}, 30, "both probes to pass")
    pod = read_pod(api_client, core, "gated", namespace)
    assert pod is not None
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    logs = subprocess.run(
        [*kubectl, "logs", "-n", namespace, "gated", "-c", "server"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert logs == "waiting for the gate\nserving\n"
