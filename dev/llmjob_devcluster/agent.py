"""The node agent: one process standing in for the kubelets of N nodes.

It registers the nodes (cpu, memory, pods and nvidia.com/gpu capacity), keeps their
Leases and Ready conditions fresh, watches the pods the real kube-scheduler binds to
them and runs each as local processes (runtime.PodWorker), keeps every pod's /etc/hosts
in step with the headless Services of its namespace, provisions hostPath volumes for
the dev StorageClass (provisioner.py), and serves container logs on each node's kubelet
endpoint so `kubectl logs` works.

Losing a node on purpose (for failure tests): create the file
`.devcluster/control/lost-<node>`. The agent then kills that node's pods at once and
stops its heartbeats, as if the machine had died; the real node-lifecycle controller
marks it NotReady and taints it, and the taint evicts its pods. Remove the file and the
node comes back (Ready, heartbeats, runs what is bound to it).

Configuration (environment): LLMJOB_DEVCLUSTER_NODES (2), LLMJOB_DEVCLUSTER_GPUS_PER_NODE
(8), LLMJOB_DEVCLUSTER_CPUS_PER_NODE (16), LLMJOB_DEVCLUSTER_MEMORY_PER_NODE (64Gi).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from llmjob_devcluster import kube, podspec, provisioner
from llmjob_devcluster.kubelet_server import KubeletServer
from llmjob_devcluster.layout import Layout
from llmjob_devcluster.runtime import PodWorker

log = logging.getLogger("llmjob_devcluster.agent")

LEASE_RENEW_SECONDS = 2.0
LEASE_DURATION_SECONDS = 10
STATUS_HEARTBEAT_SECONDS = 10.0
KUBELET_VERSION = "v1.37.2"


class NodeAgent:
    def __init__(self, layout: Layout, capacity: dict[str, str]) -> None:
        self.layout = layout
        self.node_names = layout.node_names
        # Each node acts as itself (system:node:<name>), as a kubelet does, so the Node
        # authorizer and NodeRestriction check everything it does.
        self.apis = {
            name: kube.api_client(layout.node_kubeconfig(name)) for name in self.node_names
        }
        self.cores = {name: client.CoreV1Api(api) for name, api in self.apis.items()}
        self.leases = {name: client.CoordinationV1Api(api) for name, api in self.apis.items()}
        # The dev StorageClass's provisioner is a cluster component, not a kubelet.
        self.admin_api = kube.api_client(layout.kubeconfig)
        self.capacity = capacity
        self.workers: dict[str, PodWorker] = {}
        self.workers_lock = threading.Lock()
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.services_lock = threading.Lock()
        self.stopping = threading.Event()
        self.ip_lock = threading.Lock()
        self.used_ips: set[str] = set()
        self.lost: set[str] = set()
        # Nodes back from being lost whose pods must be relisted, with their old workers.
        self.returning: dict[str, list[PodWorker]] = {}

    # --- PodHost --------------------------------------------------------------------------

    def allocatable(self, node: str) -> dict[str, str]:
        return self.capacity

    def node_ip(self, node: str) -> str:
        return self.layout.node_ip(self.node_names.index(node))

    def allocate_ip(self, wanted: str | None) -> str:
        """127.<cluster>.<1..254>.<1..254>, unique per live pod; `wanted` (the address a
        pod already had before the agent restarted) is kept if it is still free."""
        prefix = f"127.{self.layout.address_octet}."
        with self.ip_lock:
            if wanted and wanted.startswith(prefix) and wanted not in self.used_ips:
                self.used_ips.add(wanted)
                return wanted
            for third in range(1, 255):
                for fourth in range(1, 255):
                    ip = f"{prefix}{third}.{fourth}"
                    if ip not in self.used_ips:
                        self.used_ips.add(ip)
                        return ip
        raise RuntimeError("out of pod addresses")

    def release_ip(self, ip: str) -> None:
        with self.ip_lock:
            self.used_ips.discard(ip)

    # --- nodes ----------------------------------------------------------------------------

    def node_object(self, name: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "llmjob-dev",
                },
            },
            "spec": {},
        }

    def node_status(self, index: int, name: str) -> dict[str, Any]:
        now = kube.now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                {
                    "type": kind,
                    "status": value,
                    "reason": reason,
                    "message": "llmjob node agent",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
                for kind, value, reason in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.layout.node_ip(index)},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.layout.kubelet_port(index)}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "llmjob dev node (host processes)",
                "containerRuntimeVersion": "llmjob://1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self, index: int, name: str) -> None:
        """Creates the Node unless it exists, posts its status, renews its Lease."""
        try:
            self.cores[name].create_node(
                kube.model(client.V1Node, self.node_object(name)),
                _request_timeout=kube.REQUEST_TIMEOUT,
            )
        except client.ApiException as error:
            if not kube.is_status(error, 409):
                raise
        self.patch_node_status(index, name)
        self.renew_lease(name)

    def patch_node_status(self, index: int, name: str) -> None:
        """Writes Ready=True with a fresh heartbeat. lastTransitionTime is only sent when
        the condition actually changes, so the API keeps the time it became Ready."""
        status = self.node_status(index, name)
        current = kube.as_dict(
            self.apis[name], self.cores[name].read_node(name, _request_timeout=kube.REQUEST_TIMEOUT)
        )
        previous = {c["type"]: c for c in (current.get("status") or {}).get("conditions") or []}
        for condition in status["conditions"]:
            old = previous.get(condition["type"])
            if old is not None and old["status"] == condition["status"]:
                condition["lastTransitionTime"] = old["lastTransitionTime"]
        self.cores[name].patch_node_status(
            name,
            {"status": status},
            _content_type="application/strategic-merge-patch+json",
            _request_timeout=kube.REQUEST_TIMEOUT,
        )

    def renew_lease(self, name: str) -> None:
        lease: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": kube.now_micro(),
            },
        }
        try:
            self.leases[name].patch_namespaced_lease(
                name,
                "kube-node-lease",
                {"spec": lease["spec"]},
                _content_type="application/merge-patch+json",
                _request_timeout=kube.REQUEST_TIMEOUT,
            )
        except client.ApiException as error:
            if not kube.is_status(error, 404):
                raise
            node = kube.as_dict(
                self.apis[name],
                self.cores[name].read_node(name, _request_timeout=kube.REQUEST_TIMEOUT),
            )
            lease["metadata"]["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
            ]
            self.leases[name].create_namespaced_lease(
                "kube-node-lease",
                kube.model(client.V1Lease, lease),
                _request_timeout=kube.REQUEST_TIMEOUT,
            )

    def heartbeat_loop(self) -> None:
        """Renews each node's Lease every LEASE_RENEW_SECONDS and posts its Ready status
        every STATUS_HEARTBEAT_SECONDS, as a kubelet does. A failure (the API server down,
        say) is retried on the next tick, forever; the first heartbeat after one also
        posts the status, since the node controller may have marked the node NotReady."""
        last_status: dict[str, float] = {}
        while not self.stopping.is_set():
            try:
                self.check_lost_nodes()
            except kube.CONNECTION_ERRORS as error:
                log.warning("relist of returning nodes failed, retrying: %s", error)
            for index, name in enumerate(self.node_names):
                if name in self.lost:
                    last_status.pop(name, None)
                    continue
                try:
                    self.renew_lease(name)
                    if time.monotonic() - last_status.get(name, 0.0) > STATUS_HEARTBEAT_SECONDS:
                        self.patch_node_status(index, name)
                        last_status[name] = time.monotonic()
                except kube.CONNECTION_ERRORS as error:
                    last_status.pop(name, None)
                    log.warning(
                        "node %s heartbeat failed, retrying in %.0fs: %s",
                        name,
                        LEASE_RENEW_SECONDS,
                        error,
                    )
            self.stopping.wait(LEASE_RENEW_SECONDS)

    def check_lost_nodes(self) -> None:
        lost = {
            name for name in self.node_names if (self.layout.control_dir / f"lost-{name}").exists()
        }
        for name in lost - self.lost:
            log.warning("node %s lost on purpose: killing its pods, stopping heartbeats", name)
            with self.workers_lock:
                for worker in self.workers.values():
                    if worker.node == name:
                        worker.lost.set()
        for name in self.lost - lost:
            log.warning("node %s back", name)
            with self.workers_lock:
                dead = [w for w in self.workers.values() if w.node == name]
                for worker in dead:
                    self.workers.pop(worker.uid, None)
            self.returning[name] = dead
        self.lost = lost
        for name, dead in list(self.returning.items()):
            # What happened to its pods meanwhile (evictions) came while it was deaf. Kept
            # in `returning` until a list succeeds.
            listing = self.cores[name].list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={name}", _request_timeout=kube.REQUEST_TIMEOUT
            )
            for pod in kube.as_dict(self.apis[name], listing)["items"]:
                self.handle_pod("ADDED", pod)
            del self.returning[name]
            with self.workers_lock:
                gone = [w for w in dead if w.uid not in self.workers]
            for worker in gone:
                # Deleted while the node was away: only its directory is left to clean.
                shutil.rmtree(worker.dir, ignore_errors=True)

    # --- pods -----------------------------------------------------------------------------

    def handle_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        node = (pod.get("spec") or {}).get("nodeName")
        if node not in self.node_names or node in self.lost:
            return
        uid = pod["metadata"]["uid"]
        with self.workers_lock:
            worker = self.workers.get(uid)
            if event_type == "DELETED":
                if worker is not None:
                    # Force-deleted (grace 0) by someone else: stop its processes now.
                    worker.pod["metadata"].setdefault("deletionTimestamp", kube.now())
                    worker.pod["metadata"]["deletionGracePeriodSeconds"] = 0
                return
            if worker is None:
                worker = PodWorker(self, pod, self.apis[node], self.cores[node])
                self.workers[uid] = worker
                worker.start()
            else:
                worker.update(pod)

    def pod_watch_loop(self, node: str) -> None:
        """Lists, then watches, the pods bound to `node` (the field selector the Node
        authorizer insists on); a relist also notices pods deleted while it was away."""

        def relisted(pods: list[dict[str, Any]]) -> None:
            seen = set()
            for pod in pods:
                seen.add(pod["metadata"]["uid"])
                self.handle_pod("ADDED", pod)
            with self.workers_lock:
                gone = [w for uid, w in self.workers.items() if w.node == node and uid not in seen]
            for worker in gone:
                self.handle_pod("DELETED", worker.pod)

        kube.watch_forever(
            self.cores[node].list_pod_for_all_namespaces,
            self.apis[node],
            what=f"pod watch of {node}",
            on_list=relisted,
            on_event=self.handle_pod,
            stopping=self.stopping,
            field_selector=f"spec.nodeName={node}",
        )

    def reap_workers(self) -> None:
        with self.workers_lock:
            for uid in [
                uid
                for uid, w in self.workers.items()
                if not w.is_alive() and w.finished and w.node not in self.lost
            ]:
                if self.workers[uid].deleting:
                    del self.workers[uid]

    # --- /etc/hosts: cluster DNS for headless Services ------------------------------------

    def service_watch_loop(self) -> None:
        def relisted(services: list[dict[str, Any]]) -> None:
            with self.services_lock:
                self.services = {
                    (s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services
                }

        def changed(event_type: str, service: dict[str, Any]) -> None:
            key = (service["metadata"]["namespace"], service["metadata"]["name"])
            with self.services_lock:
                if event_type == "DELETED":
                    self.services.pop(key, None)
                else:
                    self.services[key] = service

        node = self.node_names[0]
        kube.watch_forever(
            self.cores[node].list_service_for_all_namespaces,
            self.apis[node],
            what="service watch",
            on_list=relisted,
            on_event=changed,
            stopping=self.stopping,
        )

    def peer_entries(self, namespace: str, workers: list[PodWorker]) -> list[tuple[str, list[str]]]:
        """What cluster DNS would answer for the namespace's headless Services: each pod
        with hostname+subdomain, selected by the headless Service named like its
        subdomain, ready or published while not ready."""
        entries = []
        with self.services_lock:
            services = {name: s for (ns, name), s in self.services.items() if ns == namespace}
        for worker in workers:
            service = services.get(worker.subdomain or "")
            if service is None or worker.ip is None:
                continue
            spec = service.get("spec") or {}
            if spec.get("clusterIP") != "None":
                continue
            labels = worker.pod["metadata"].get("labels") or {}
            if spec.get("selector") and not podspec.selector_matches(spec["selector"], labels):
                continue
            if not (worker.ready or spec.get("publishNotReadyAddresses")):
                continue
            assert worker.subdomain is not None
            entries.append(
                (worker.ip, podspec.dns_names(worker.hostname, worker.subdomain, namespace))
            )
        return entries

    def hosts_content(self, worker: PodWorker) -> str:
        """The pod's /etc/hosts: its own names, and its namespace's headless-Service names."""
        assert worker.ip is not None
        with self.workers_lock:
            neighbours = [
                w for w in self.workers.values() if w.alive and w.namespace == worker.namespace
            ]
        own = [worker.hostname]
        if worker.subdomain:
            own = podspec.dns_names(worker.hostname, worker.subdomain, worker.namespace) + own
        peers = self.peer_entries(worker.namespace, neighbours)
        others = [(ip, names) for ip, names in peers if ip != worker.ip]
        return podspec.hosts_file(worker.ip, own, others)

    def hosts_loop(self) -> None:
        """Keeps every pod's /etc/hosts in step as pods and Services come and go."""
        while not self.stopping.is_set():
            self.reap_workers()
            with self.workers_lock:
                alive = [w for w in self.workers.values() if w.alive]
            for worker in alive:
                with contextlib.suppress(OSError):
                    worker.write_hosts(self.hosts_content(worker))
            self.stopping.wait(0.2)

    # --- running --------------------------------------------------------------------------

    def run(self) -> None:
        self.layout.control_dir.mkdir(parents=True, exist_ok=True)
        self.layout.pods_dir.mkdir(parents=True, exist_ok=True)
        self.layout.pods_dir.chmod(0o700)
        # A kubelet that starts while the API server is away keeps trying to register.
        kube.call_until_done(
            "StorageClass", lambda: provisioner.ensure_storage_class(self.admin_api), self.stopping
        )
        for index, name in enumerate(self.node_names):
            kube.call_until_done(
                f"registration of {name}",
                functools.partial(self.register, index, name),
                self.stopping,
            )
        servers = [
            KubeletServer(self, name, self.layout.node_ip(i), self.layout.kubelet_port(i))
            for i, name in enumerate(self.node_names)
        ]
        loops = [self.heartbeat_loop, self.service_watch_loop, self.hosts_loop]
        threads = [threading.Thread(target=loop, name=loop.__name__, daemon=True) for loop in loops]
        threads += [
            threading.Thread(
                target=self.pod_watch_loop, args=(name,), name=f"pods-{name}", daemon=True
            )
            for name in self.node_names
        ]
        threads.append(
            threading.Thread(
                target=provisioner.run,
                args=(self.admin_api, self.layout, self.stopping),
                name="provisioner",
                daemon=True,
            )
        )
        for thread in threads:
            thread.start()
        for server in servers:
            server.start()
        (self.layout.state_dir / "agent-ready").write_text(str(os.getpid()))
        log.info("nodes %s registered", ", ".join(self.node_names))
        self.stopping.wait()
        for server in servers:
            server.stop()
        with self.workers_lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.shutdown.set()
        for worker in workers:
            worker.join(timeout=15)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    layout = Layout.from_env()
    capacity = {
        "cpu": os.environ.get("LLMJOB_DEVCLUSTER_CPUS_PER_NODE", "16"),
        "memory": os.environ.get("LLMJOB_DEVCLUSTER_MEMORY_PER_NODE", "64Gi"),
        "pods": "110",
        "ephemeral-storage": "100Gi",
        "nvidia.com/gpu": os.environ.get("LLMJOB_DEVCLUSTER_GPUS_PER_NODE", "8"),
    }
    agent = NodeAgent(layout, capacity)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.run()
    Path(layout.state_dir / "agent-ready").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
