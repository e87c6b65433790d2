"""Kueue on the local cluster, an opt-in: `make kueue` (python -m llmjob_devcluster.kueue up |
down | status) or `kueue.up(layout)` from a test fixture, once the cluster is up.

The real Kueue manager, built from the Go module proxy by dev/build-kueue.sh (cached), runs as a
host process beside the control plane, as the other components do:

- Its CRDs, RBAC and webhook configurations are Kueue's own: config/default of the same module,
  rendered by the pinned kubectl's kustomize, as Kueue's release manifests are. What makes up
  its in-cluster Deployment (Deployment, Services, Secret, APIService, ConfigMap) is left out,
  and every webhook client config (admission and CRD conversion) points at
  `https://127.0.0.1:<port><path>` with the cluster's CA instead of the webhook Service: Kueue
  serves them with a certificate the dev PKI signs; its internal cert management is off.
- Kueue's own API and the `pod` integration only. Kueue manages pods only in namespaces that opt
  in (MANAGED_NAMESPACE_LABEL=true), and the API server calls its pod webhooks only there: the
  rest of the cluster never depends on Kueue being up.
- It authenticates with a client certificate naming its ServiceAccount, so it runs with exactly
  the RBAC that Kueue's manifests grant kueue-system/kueue-controller-manager.
- Kueue reads its metrics certificate from the fixed path /etc/kueue/metrics/certs even with
  metrics off. It runs in a private mount namespace whose /etc is an overlay holding that
  directory; the host's /etc is untouched.
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from llmjob_devcluster import certs, cluster, hostmanager, processes
from llmjob_devcluster.layout import REPO_ROOT, Layout

Obj = dict[str, Any]

NAMESPACE = "kueue-system"
SERVICE_ACCOUNT = "kueue-controller-manager"
# Namespaces whose pods Kueue manages carry this label with the value "true".
MANAGED_NAMESPACE_LABEL = "devcluster.llmjob.dev/kueue-managed"
PROCESS = "kueue"
CLIENT = certs.ClientCert(
    "kueue",
    f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}",
    ("system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"),
)
SERVING_CERT = "kueue-webhook"
KUEUE_GROUP = "kueue.x-k8s.io"
# What config/default deploys into the cluster to run the manager there; the host process and
# the URL client configs replace it.
IN_CLUSTER_KINDS = frozenset({"Deployment", "Service", "Secret", "APIService", "ConfigMap"})
# The script that gives Kueue its own /etc: an overlay on the host's (mounts below /etc, such
# as a container's /etc/hosts, are carried over), then exec of the manager. $1 is the
# overlay's directory; the rest is the manager's command line.
PRIVATE_ETC_SCRIPT = (
    'set -e; mkdir -p "$1/merged"; '
    'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" "$1/merged"; '
    "awk '$5 ~ \"^/etc/\" {print $5}' /proc/self/mountinfo | while read -r m; do "
    'mount --bind "$m" "$1/merged${m#/etc}"; done; '
    'mount --move "$1/merged" /etc; shift; exec "$@"'
)


BUILD_SCRIPT = REPO_ROOT / "dev" / "build-kueue.sh"


def build() -> Path:
    """Builds (or finds cached) the manager; returns the directory holding bin/ and config/.
    Waits for a build already under way (start_build's) instead of building twice."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def start_build(log: Path) -> subprocess.Popen[bytes]:
    """Starts build() in the background at the lowest CPU priority (nice 19), in its own process
    group, logging to `log`: it takes only the CPU that others leave idle, and a later build()
    waits for it. Returns at once (the build script itself returns at once when cached)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        return subprocess.Popen(
            ["nice", "-n", "19", "bash", str(BUILD_SCRIPT)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=output,
            start_new_session=True,
        )


def state_dir(layout: Layout) -> Path:
    return layout.state_dir / "kueue"


def kustomize(kubectl: Path, config_dir: Path) -> list[Obj]:
    """Kueue's config/default as its release manifests are made (kustomize build)."""
    return hostmanager.kustomize(kubectl, config_dir / "default")


def _serves_enabled_api(webhook: Obj) -> bool:
    """Kueue's own API or pods (the one integration enabled): the other integrations' webhooks
    are not served by this manager and would make every write of their objects fail."""
    for rule in webhook.get("rules") or []:
        groups = rule.get("apiGroups") or []
        if KUEUE_GROUP in groups or ("" in groups and "pods" in (rule.get("resources") or [])):
            return True
    return False


def _is_pod_webhook(webhook: Obj) -> bool:
    return any("pods" in (rule.get("resources") or []) for rule in webhook.get("rules") or [])


def manifests(objects: list[Obj], port: int, ca_bundle: str) -> list[Obj]:
    """Kueue's manifests for a manager on the host: no in-cluster deployment, webhooks (and CRD
    conversion) on a loopback URL, pod webhooks only for namespaces that opt in."""
    kept: list[Obj] = []
    for original in objects:
        obj = copy.deepcopy(original)
        kind = obj["kind"]
        if kind in IN_CLUSTER_KINDS:
            continue
        if kind == "CustomResourceDefinition":
            hostmanager.loopback_conversion(obj, port, ca_bundle)
        elif kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            hooks = [hook for hook in obj["webhooks"] if _serves_enabled_api(hook)]
            for hook in hooks:
                hook["clientConfig"] = hostmanager.url_client_config(
                    hook["clientConfig"], port, ca_bundle
                )
                if _is_pod_webhook(hook):
                    hook["namespaceSelector"] = {"matchLabels": {MANAGED_NAMESPACE_LABEL: "true"}}
            obj["webhooks"] = hooks
        kept.append(obj)
    return kept


def configuration(layout: Layout, cert_dir: Path) -> Obj:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for this cluster."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{layout.kueue_health_port}"},
        # Nothing scrapes Kueue here, and a metrics server would need one more port.
        "metrics": {"bindAddress": "0"},
        "webhook": {
            "host": "127.0.0.1",
            "port": layout.kueue_webhook_port,
            "certDir": str(cert_dir),
        },
        # One manager per cluster: no Lease to wait for at start-up.
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchLabels": {MANAGED_NAMESPACE_LABEL: "true"}},
        "integrations": {"frameworks": ["pod"]},
        # The visibility API server would need its own port, certificate and APIService.
        "featureGates": {"VisibilityOnDemand": False},
    }


def _write_certificates(layout: Layout) -> Path:
    """The webhook's serving certificate (also the metrics one, which Kueue insists on reading)
    where Kueue looks for them; returns the webhook's cert directory."""
    pki = layout.pki_dir
    certs.ensure_client_cert(pki, CLIENT)
    certs.ensure_server_cert(pki, SERVING_CERT, "kueue-webhook", ["127.0.0.1"], ["localhost"])
    webhook_dir = state_dir(layout) / "webhook-certs"
    metrics_dir = state_dir(layout) / "etc" / "upper" / "kueue" / "metrics" / "certs"
    for directory in (webhook_dir, metrics_dir):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        shutil.copyfile(pki / f"{SERVING_CERT}.crt", directory / "tls.crt")
        shutil.copyfile(pki / f"{SERVING_CERT}.key", directory / "tls.key")
    (state_dir(layout) / "etc" / "work").mkdir(parents=True, exist_ok=True)
    return webhook_dir


def install(layout: Layout, built: Path) -> None:
    """Applies Kueue's CRDs, RBAC and webhook configurations; waits for the CRDs."""
    ca_bundle = base64.b64encode((layout.pki_dir / "ca.crt").read_bytes()).decode()
    objects = manifests(
        kustomize(layout.bin_link / "kubectl", built / "config"),
        layout.kueue_webhook_port,
        ca_bundle,
    )
    hostmanager.apply_and_wait(layout, objects)


def is_healthy(layout: Layout) -> bool:
    """Ready: its webhook server is serving (Kueue's own readyz says so)."""
    return hostmanager.answers_ok(f"http://127.0.0.1:{layout.kueue_health_port}/readyz")


def is_running(layout: Layout) -> bool:
    return processes.running_pid(layout.pid_dir, PROCESS) is not None and is_healthy(layout)


def up(layout: Layout) -> None:
    """Installs Kueue into the running cluster and starts its manager (idempotent)."""
    started_at = time.monotonic()
    built = build()
    cert_dir = _write_certificates(layout)
    kubeconfig = layout.state_dir / "kubeconfigs" / "kueue.kubeconfig"
    cluster.write_kubeconfig(layout, kubeconfig, CLIENT)
    config_file = state_dir(layout) / "config.yaml"
    config_file.write_text(yaml.safe_dump(configuration(layout, cert_dir)))
    install(layout, built)
    if is_running(layout):
        cluster.log(f"kueue already running ({time.monotonic() - started_at:.1f}s)")
        return
    processes.stop(layout.pid_dir, PROCESS, grace=10)
    binary = built / "bin" / "kueue"
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        PRIVATE_ETC_SCRIPT,
        "kueue-private-etc",
        str(state_dir(layout) / "etc"),
        str(binary),
        f"--config={config_file}",
    ]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    cluster.log("starting kueue")
    process = processes.start(layout.pid_dir, layout.log_dir, PROCESS, argv, env, str(binary))
    deadline = time.monotonic() + 120
    while not is_healthy(layout):
        if process.poll() is not None:
            raise SystemExit(f"devcluster: kueue exited; see {layout.log_dir / 'kueue.log'}")
        if time.monotonic() > deadline:
            raise SystemExit("devcluster: kueue not ready after 120s")
        time.sleep(0.2)
    cluster.log(f"kueue started in {time.monotonic() - started_at:.1f}s")


def down(layout: Layout) -> None:
    """Stops the manager and removes its webhook configurations, so that the cluster works as
    without Kueue (its CRDs and objects stay)."""
    processes.stop(layout.pid_dir, PROCESS, grace=10)
    if cluster.is_healthy(layout, "kube-apiserver"):
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            hostmanager.kubectl(
                layout, "delete", kind, "-l=app.kubernetes.io/name=kueue", "--ignore-not-found"
            )
    cluster.log("kueue stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args()
    layout = Layout.from_env()
    if args.command == "up":
        up(layout)
    elif args.command == "down":
        down(layout)
    else:
        running = is_running(layout)
        print(f"kueue {'healthy' if running else 'stopped'}")
        if not running:
            sys.exit(1)


if __name__ == "__main__":
    main()
