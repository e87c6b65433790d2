"""`make cluster` / `make cluster-down`: start and stop etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and the node agent on 127.0.0.1.

Usage: python -m llmjob_devcluster.cluster up | down | status | lose-node NODE |
    restore-node NODE | restart COMPONENT [--down-seconds N] [--signal KILL|TERM] |
    expire-watches
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llmjob_devcluster import audit, certs, processes
from llmjob_devcluster.layout import REPO_ROOT, Layout
from llmjob_devcluster.podprocs import kill_leftover_pods

SERVICE_CIDR = "10.96.0.0/16"
ADMIN = certs.ClientCert("admin", "kubernetes-admin", ("system:masters",))
CONTROLLER_MANAGER = certs.ClientCert("controller-manager", "system:kube-controller-manager")
SCHEDULER = certs.ClientCert("scheduler", "system:kube-scheduler")
# The API server presents this to node agents when it fetches logs (kubectl logs).
KUBELET_CLIENT = certs.ClientCert(
    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
)
# Start order; stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent")
# Started on request only (kueue.py, jobset.py, kwok.py); stopped first by `down`.
OPT_IN_COMPONENTS = ("kueue", "jobset", "kwok")
# Short node-lifecycle timings so that a lost node goes NotReady and its pods are evicted
# within seconds in tests (upstream defaults: 40s lease, 50s grace, 300s tolerations).
# LLMJOB_DEVCLUSTER_NODE_GRACE_SECONDS sets another grace at `up`: `make bench-scale` uses
# upstream's, so that a thousand simulated nodes renew their Leases at a kubelet's pace.
NODE_MONITOR_GRACE_SECONDS = 8
UNREACHABLE_TOLERATION_SECONDS = 5


def node_monitor_grace_seconds() -> int:
    return int(os.environ.get("LLMJOB_DEVCLUSTER_NODE_GRACE_SECONDS", NODE_MONITOR_GRACE_SECONDS))


def log(message: str) -> None:
    print(f"devcluster: {message}", file=sys.stderr, flush=True)


def build_binaries(layout: Layout) -> Path:
    """Builds (or finds cached) the control-plane programs; links state_dir/bin to them."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "dev" / "build-controlplane.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    if layout.bin_link.is_symlink() or layout.bin_link.exists():
        layout.bin_link.unlink()
    layout.bin_link.symlink_to(bin_dir)
    return bin_dir


def write_kubeconfig(layout: Layout, path: Path, client: certs.ClientCert) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((layout.pki_dir / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "llmjob-dev",
                "cluster": {
                    "server": layout.apiserver_url,
                    "certificate-authority-data": b64("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": client.common_name,
                "user": {
                    "client-certificate-data": b64(f"{client.name}.crt"),
                    "client-key-data": b64(f"{client.name}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "llmjob-dev",
                "context": {"cluster": "llmjob-dev", "user": client.common_name},
            }
        ],
        "current-context": "llmjob-dev",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


# Native gang scheduling (KEP-4671, beta and off by default in 1.37): the API server serves
# scheduling.k8s.io/v1beta1 Workloads and PodGroups and stamps the PodGroup protection
# finalizer, the scheduler enables its GangScheduling plugin, and the controller-manager runs
# the controller that lifts that finalizer once no pod uses the group. One gate for all three.
FEATURE_GATES = "--feature-gates=GenericWorkload=true"


def component_argv(layout: Layout, bin_dir: Path, name: str) -> list[str]:
    pki = layout.pki_dir
    kubeconfigs = layout.state_dir / "kubeconfigs"
    if name == "etcd":
        client_url = f"http://127.0.0.1:{layout.etcd_client_port}"
        peer_url = f"http://127.0.0.1:{layout.etcd_peer_port}"
        return [
            str(bin_dir / "etcd"),
            "--name=devcluster",
            f"--data-dir={layout.state_dir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=devcluster={peer_url}",
            # A throwaway dev cluster: durability across power loss is not worth the fsyncs.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
    if name == "kube-apiserver":
        return [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{layout.etcd_client_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The endpoint reconciler refuses loopback addresses; pods reach the API server
            # through KUBERNETES_SERVICE_HOST=127.0.0.1 instead of the service's cluster IP.
            "--endpoint-reconciler-type=none",
            f"--secure-port={layout.apiserver_port}",
            f"--tls-cert-file={pki / 'serving.crt'}",
            f"--tls-private-key-file={pki / 'serving.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={pki / (KUBELET_CLIENT.name + '.crt')}",
            f"--kubelet-client-key={pki / (KUBELET_CLIENT.name + '.key')}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            FEATURE_GATES,
            "--runtime-config=scheduling.k8s.io/v1beta1=true",
            f"--default-not-ready-toleration-seconds={UNREACHABLE_TOLERATION_SECONDS}",
            f"--default-unreachable-toleration-seconds={UNREACHABLE_TOLERATION_SECONDS}",
            "--profiling=false",
            *audit.apiserver_flags(layout),
        ]
    if name == "kube-controller-manager":
        kubeconfig = kubeconfigs / "controller-manager.kubeconfig"
        return [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={layout.controller_manager_port}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            FEATURE_GATES,
            "--node-monitor-period=1s",
            f"--node-monitor-grace-period={node_monitor_grace_seconds()}s",
            "--profiling=false",
        ]
    if name == "kube-scheduler":
        kubeconfig = kubeconfigs / "scheduler.kubeconfig"
        return [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={layout.scheduler_port}",
            "--leader-elect=false",
            FEATURE_GATES,
            "--profiling=false",
        ]
    if name == "node-agent":
        return [sys.executable, "-m", "llmjob_devcluster.agent"]
    raise ValueError(name)


def _admin_context(layout: Layout) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(layout.pki_dir / "ca.crt"))
    context.load_cert_chain(
        str(layout.pki_dir / f"{ADMIN.name}.crt"), str(layout.pki_dir / f"{ADMIN.name}.key")
    )
    return context


def _https_ok(url: str, layout: Layout, client_cert: bool) -> bool:
    if client_cert:
        context = _admin_context(layout)
    else:
        # kube-controller-manager and kube-scheduler serve self-signed health endpoints.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def is_healthy(layout: Layout, name: str) -> bool:
    if name == "etcd":
        try:
            url = f"http://127.0.0.1:{layout.etcd_client_port}/health"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False
    if name == "kube-apiserver":
        return _https_ok(f"{layout.apiserver_url}/readyz", layout, client_cert=True)
    if name == "kube-controller-manager":
        return _https_ok(
            f"https://127.0.0.1:{layout.controller_manager_port}/healthz", layout, False
        )
    if name == "kube-scheduler":
        return _https_ok(f"https://127.0.0.1:{layout.scheduler_port}/healthz", layout, False)
    if name == "node-agent":
        return (layout.state_dir / "agent-ready").exists()
    raise ValueError(name)


def wait_healthy(
    layout: Layout, name: str, process: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not is_healthy(layout, name):
        if process.poll() is not None:
            raise SystemExit(f"devcluster: {name} exited; see {layout.log_dir / (name + '.log')}")
        if time.monotonic() > deadline:
            raise SystemExit(f"devcluster: {name} not healthy after {timeout:.0f}s")
        time.sleep(0.2)


def start_component(layout: Layout, bin_dir: Path, name: str) -> None:
    """Starts one component and waits until it is healthy."""
    env = dict(os.environ)
    env["KUBECONFIG"] = str(layout.kubeconfig)
    env["LLMJOB_DEVCLUSTER_DIR"] = str(layout.state_dir)
    env["PYTHONPATH"] = str(REPO_ROOT / "dev")
    if name == "node-agent":
        (layout.state_dir / "agent-ready").unlink(missing_ok=True)
    log(f"starting {name}")
    argv = component_argv(layout, bin_dir, name)
    process = processes.start(layout.pid_dir, layout.log_dir, name, argv, env)
    wait_healthy(layout, name, process, timeout=120)


def up(layout: Layout) -> None:
    """Starts whatever is not running (idempotent)."""
    started_at = time.monotonic()
    bin_dir = build_binaries(layout)
    node_clients = [
        certs.ClientCert(node, f"system:node:{node}", ("system:nodes",))
        for node in layout.node_names
    ]
    certs.ensure_pki(
        layout.pki_dir,
        server_ips=["127.0.0.1", "10.96.0.1"],
        server_names=[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        clients=[ADMIN, CONTROLLER_MANAGER, SCHEDULER, KUBELET_CLIENT, *node_clients],
    )
    write_kubeconfig(layout, layout.kubeconfig, ADMIN)
    kubeconfigs = layout.state_dir / "kubeconfigs"
    write_kubeconfig(layout, kubeconfigs / "controller-manager.kubeconfig", CONTROLLER_MANAGER)
    write_kubeconfig(layout, kubeconfigs / "scheduler.kubeconfig", SCHEDULER)
    for node_client in node_clients:
        write_kubeconfig(layout, layout.node_kubeconfig(node_client.name), node_client)
    audit.write_policy(layout)
    started_any = False
    for name in COMPONENTS:
        if processes.running_pid(layout.pid_dir, name) is not None and is_healthy(layout, name):
            continue
        processes.stop(layout.pid_dir, name, grace=5)
        start_component(layout, bin_dir, name)
        started_any = True
    verb = "started" if started_any else "already running"
    log(f"{verb} in {time.monotonic() - started_at:.1f}s; KUBECONFIG={layout.kubeconfig}")


def down(layout: Layout) -> None:
    for name in OPT_IN_COMPONENTS:
        processes.stop(layout.pid_dir, name, grace=10)
    for name in reversed(COMPONENTS):
        # The node agent stops its pods on SIGTERM; give it time to run their grace periods.
        processes.stop(layout.pid_dir, name, grace=40 if name == "node-agent" else 10)
    kill_leftover_pods(layout.pods_dir)
    (layout.state_dir / "agent-ready").unlink(missing_ok=True)
    log("stopped")


def restart(
    layout: Layout,
    name: str,
    down_seconds: float = 0.0,
    kill_signal: signal.Signals = signal.SIGKILL,
) -> None:
    """Kills one running component (SIGKILL by default: a crash, no graceful shutdown),
    keeps it down for `down_seconds`, starts it again and returns once it is healthy (the
    API server: once the controllers and the scheduler see new objects again).
    For failure tests: what every client of the component does meanwhile is real."""
    _kill(layout, name, kill_signal)
    log(f"{name} stays down for {down_seconds:g}s")
    time.sleep(down_seconds)
    start_component(layout, layout.bin_link.resolve(), name)
    if name == "kube-apiserver":
        wait_caught_up(layout)


def _kill(layout: Layout, name: str, kill_signal: signal.Signals) -> None:
    """Signals a running component; SIGKILL if it is still there 30 s later (a SIGTERMed
    kube-apiserver's graceful shutdown takes that long here with watches open)."""
    pid = processes.running_pid(layout.pid_dir, name)
    if pid is None:
        raise SystemExit(f"devcluster: {name} is not running")
    log(f"stopping {name} (pid {pid}) with {kill_signal.name}")
    processes.signal_group(pid, kill_signal)
    if processes.wait_gone([pid], 30):
        processes.signal_group(pid, signal.SIGKILL)
        processes.wait_gone([pid], 5)


def _etcd(layout: Layout, method: str, body: dict[str, object]) -> dict[str, object]:
    """One call to etcd's v3 JSON gateway (keys and values are base64)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{layout.etcd_client_port}/v3/{method}",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, object] = json.load(response)
    return result


def _api(layout: Layout, method: str, path: str, body: dict[str, object] | None = None) -> Any:
    """One call to kube-apiserver as the cluster admin; the decoded JSON answer."""
    request = urllib.request.Request(
        f"{layout.apiserver_url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=_admin_context(layout), timeout=10) as response:
        return json.load(response)


def _poll(what: str, check: Callable[[], bool], deadline: float) -> float:
    """Seconds until `check` held (errors count as not yet: the server may still be coming up)."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            if check():
                return time.monotonic() - start
        if time.monotonic() > deadline:
            raise SystemExit(f"devcluster: {what} not caught up after the API server restart")
        time.sleep(0.2)


def wait_caught_up(layout: Layout, timeout: float = 180) -> None:
    """Returns once kube-controller-manager and kube-scheduler see new objects again after a
    kube-apiserver restart. Their informers reconnect with client-go's backoff, which grows
    with every failed try and resets only after two quiet minutes: after a watch expiry,
    measured here, a new namespace waited up to 11 s for its ServiceAccount and a new pod
    45 s for the scheduler. Failure tests about other programs wait this out first."""
    deadline = time.monotonic() + timeout
    namespace = f"devcluster-probe-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    _poll(
        "creating a namespace",
        lambda: bool(_api(layout, "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})),
        deadline,
    )
    try:
        controllers = _poll(
            "kube-controller-manager",
            lambda: bool(
                _api(layout, "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
            ),
            deadline,
        )
        # A pod no node can hold: the scheduler's verdict shows it sees new pods, and no
        # node agent ever runs it.
        pod = {
            "metadata": {"name": "probe"},
            "spec": {
                "containers": [
                    {
                        "name": "probe",
                        "image": "devcluster.local/never-runs:latest",
                        "resources": {"requests": {"cpu": "100000"}},
                    }
                ]
            },
        }
        _api(layout, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)

        def judged() -> bool:
            probe = _api(layout, "GET", f"/api/v1/namespaces/{namespace}/pods/probe")
            conditions = (probe.get("status") or {}).get("conditions") or []
            return any(c.get("type") == "PodScheduled" for c in conditions)

        scheduler = _poll("kube-scheduler", judged, deadline)
        log(f"controllers caught up in {controllers:.1f}s, the scheduler in {scheduler:.1f}s")
    finally:
        # Gone before returning: the probe's own writes (the CA ConfigMap the controllers
        # publish into it, the namespace's teardown) must not land in a later test's count.
        with contextlib.suppress(urllib.error.URLError, OSError):
            _api(layout, "DELETE", f"/api/v1/namespaces/{namespace}")
        _poll("the probe namespace's deletion", lambda: _gone(layout, namespace), deadline)


def _gone(layout: Layout, namespace: str) -> bool:
    try:
        _api(layout, "GET", f"/api/v1/namespaces/{namespace}")
    except urllib.error.HTTPError as error:
        return error.code == 404
    return False


def expire_watches(layout: Layout) -> int:
    """Makes every resourceVersion handed out before this call too old to watch from: a
    watch resumed from one gets 410 Gone ("too old resource version"), so the watcher
    must relist, as after a long partition or an API server upgrade. Returns the etcd
    revision from which watching still works.

    How: kube-apiserver serves watches from its watch cache, which (re)starts at the
    revision it lists from etcd and answers 410 for anything older; a restart is the only
    way to reset it without turning the cache off. While the API server is down, a write
    outside /registry makes etcd's revision move past every version handed out, and a
    compaction to that revision expires them in etcd too (a list at an exact old
    resourceVersion gets 410 as well). A compaction alone is not enough: the cache keeps
    serving versions it holds, and its history window cannot be set below 75 s."""
    _kill(layout, "kube-apiserver", signal.SIGKILL)
    key = base64.b64encode(b"/llmjob-devcluster/expire-watches").decode()
    stamp = base64.b64encode(str(time.time()).encode()).decode()
    header = _etcd(layout, "kv/put", {"key": key, "value": stamp})["header"]
    assert isinstance(header, dict)
    revision = int(header["revision"])
    _etcd(layout, "kv/compaction", {"revision": revision, "physical": True})
    start_component(layout, layout.bin_link.resolve(), "kube-apiserver")
    wait_caught_up(layout)
    return revision


def status(layout: Layout) -> bool:
    healthy = True
    for name in COMPONENTS:
        pid = processes.running_pid(layout.pid_dir, name)
        ok = pid is not None and is_healthy(layout, name)
        healthy = healthy and ok
        print(f"{name:26} {'pid ' + str(pid) if pid else 'stopped':12} {'healthy' if ok else ''}")
    return healthy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start whatever is not running")
    commands.add_parser("down", help="stop everything, pods included")
    commands.add_parser("status", help="list the components; exit 1 unless all are healthy")
    for verb in ("lose-node", "restore-node"):
        commands.add_parser(verb, help="the node agent's lost-node marker").add_argument("node")
    restart_parser = commands.add_parser("restart", help="kill one component, then start it")
    restart_parser.add_argument("component", choices=COMPONENTS)
    restart_parser.add_argument("--down-seconds", type=float, default=0.0)
    restart_parser.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    commands.add_parser("expire-watches", help="make every watch resume get 410 Gone")
    args = parser.parse_args()
    layout = Layout.from_env()
    if args.command == "up":
        up(layout)
    elif args.command == "down":
        down(layout)
    elif args.command in ("lose-node", "restore-node"):
        # The node agent polls this marker (see agent.py).
        marker = layout.control_dir / f"lost-{args.node}"
        if args.command == "lose-node":
            layout.control_dir.mkdir(parents=True, exist_ok=True)
            marker.touch()
        else:
            marker.unlink(missing_ok=True)
    elif args.command == "restart":
        restart(layout, args.component, args.down_seconds, signal.Signals["SIG" + args.signal])
    elif args.command == "expire-watches":
        print(expire_watches(layout))
    elif not status(layout):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
