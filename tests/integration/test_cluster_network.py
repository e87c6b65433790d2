"""Pod addresses and headless-Service DNS names, as a DeepSpeed gang uses them."""

from __future__ import annotations

import functools
import socket

import pytest
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE
from llmjob_devcluster.layout import Layout
from tests.conftest import container_logs, read_pod, wait_for

pytestmark = pytest.mark.integration

# Each peer serves its own name on its pod IP, then connects to the other by DNS name.
PEER_SCRIPT = """
import os, socket, sys, threading, time
me, other, port = os.environ["HOSTNAME"], sys.argv[1], int(sys.argv[2])
namespace = os.environ["NAMESPACE"]
server = socket.create_server((os.environ["POD_IP"], port))
def serve():
    while True:
        connection, _ = server.accept()
        connection.sendall(me.encode())
        connection.close()
threading.Thread(target=serve, daemon=True).start()
name = f"{other}.gang.{namespace}.svc"
deadline = time.monotonic() + 60
while True:
    try:
        with socket.create_connection((name, port), timeout=2) as connection:
            print("reached", connection.recv(100).decode(), "at", name, flush=True)
            break
    except OSError as error:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
time.sleep(3)  # keep serving while the other side connects
"""


def test_two_pods_behind_a_headless_service_reach_each_other_by_dns_name(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str, devcluster: Layout
) -> None:
    # Pods share the host's network namespace: use a port nothing on the machine listens on.
    with socket.create_server(("0.0.0.0", 0)) as probe_socket:
        port = probe_socket.getsockname()[1]
    core.create_namespaced_service(
        namespace,
        kube.model(
            client.V1Service,
            {
                "metadata": {"name": "gang"},
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,
                    "selector": {"app": "gang"},
                    "ports": [{"name": "peer", "port": port}],
                },
            },
        ),
    )
    peers = {"worker-0": "worker-1", "worker-1": "worker-0"}
    for name, other in peers.items():
        core.create_namespaced_pod(
            namespace,
            kube.model(
                client.V1Pod,
                {
                    "metadata": {"name": name, "labels": {"app": "gang"}},
                    "spec": {
                        "hostname": name,
                        "subdomain": "gang",
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": HOST_ENVIRONMENT_IMAGE,
                                "command": ["python", "-c", PEER_SCRIPT, other, str(port)],
                                "env": [
                                    {
                                        "name": "POD_IP",
                                        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                    },
                                    {
                                        "name": "NAMESPACE",
                                        "valueFrom": {
                                            "fieldRef": {"fieldPath": "metadata.namespace"}
                                        },
                                    },
                                ],
                            }
                        ],
                    },
                },
            ),
        )

    def ended(name: str) -> kube.Obj | None:
        pod = read_pod(api_client, core, name, namespace)
        return pod if pod and pod["status"].get("phase") in ("Succeeded", "Failed") else None

    ips = set()
    for name, other in peers.items():
        pod = wait_for(functools.partial(ended, name), 90, f"{name} to finish")
        logs = container_logs(devcluster, namespace, name, "main")
        assert pod["status"]["phase"] == "Succeeded", logs
        assert f"reached {other} at {other}.gang.{namespace}.svc" in logs
        ips.add(pod["status"]["podIP"])
    assert len(ips) == 2
    assert all(ip.startswith("127.") for ip in ips)
