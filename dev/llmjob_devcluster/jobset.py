"""JobSet on the local cluster, the peer `make bench-scale` measures llmjob against: an opt-in,
`make jobset` (python -m llmjob_devcluster.jobset up | down | status) or `jobset.up(layout)`.

The real JobSet controller manager, built from the Go module proxy by dev/build-scale.sh
(cached), runs as a host process beside the control plane, as Kueue does (kueue.py):
- its CRDs, RBAC and webhook configurations are JobSet's own config/default, rendered by the
  pinned kubectl's kustomize, less what runs it in the cluster (Deployment, Services, Secret);
- every webhook client config points at `https://127.0.0.1:<port><path>` with the dev CA, and
  the manager serves them with a certificate the dev PKI signs (its cert rotation is off);
  its pod webhooks only see pods labelled with a JobSet name (upstream's objectSelector);
- it authenticates with a client certificate naming its ServiceAccount, so it runs with exactly
  the RBAC JobSet's manifests grant jobset-system/jobset-controller-manager;
- its client QPS and burst are JobSet's defaults (500/500): measured as shipped.
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from llmjob_devcluster import certs, cluster, hostmanager, processes, scalebuild
from llmjob_devcluster.hostmanager import Obj
from llmjob_devcluster.layout import Layout

NAMESPACE = "jobset-system"
SERVICE_ACCOUNT = "jobset-controller-manager"
PROCESS = "jobset"
CLIENT = certs.ClientCert(
    "jobset",
    f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}",
    ("system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"),
)
SERVING_CERT = "jobset-webhook"
IN_CLUSTER_KINDS = frozenset({"Deployment", "Service", "Secret", "ConfigMap"})


def state_dir(layout: Layout) -> Path:
    return layout.state_dir / "jobset"


def manifests(objects: list[Obj], port: int, ca_bundle: str) -> list[Obj]:
    """JobSet's manifests for a manager on the host: no in-cluster deployment, webhooks (and
    CRD conversion) on a loopback URL."""
    kept: list[Obj] = []
    for original in objects:
        obj = copy.deepcopy(original)
        kind = obj["kind"]
        if kind in IN_CLUSTER_KINDS:
            continue
        if kind == "CustomResourceDefinition":
            hostmanager.loopback_conversion(obj, port, ca_bundle)
        elif kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            for hook in obj["webhooks"]:
                hook["clientConfig"] = hostmanager.url_client_config(
                    hook["clientConfig"], port, ca_bundle
                )
        kept.append(obj)
    return kept


def configuration(layout: Layout, cert_dir: Path) -> Obj:
    """JobSet's Configuration (config.jobset.x-k8s.io/v1alpha1) for this cluster."""
    return {
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{layout.jobset_health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {
            "host": "127.0.0.1",
            "port": layout.jobset_webhook_port,
            "certDir": str(cert_dir),
        },
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
    }


def _write_certificates(layout: Layout) -> Path:
    pki = layout.pki_dir
    certs.ensure_client_cert(pki, CLIENT)
    certs.ensure_server_cert(pki, SERVING_CERT, "jobset-webhook", ["127.0.0.1"], ["localhost"])
    cert_dir = state_dir(layout) / "webhook-certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert_dir.chmod(0o700)
    shutil.copyfile(pki / f"{SERVING_CERT}.crt", cert_dir / "tls.crt")
    shutil.copyfile(pki / f"{SERVING_CERT}.key", cert_dir / "tls.key")
    return cert_dir


def install(layout: Layout, built: Path) -> None:
    """Applies JobSet's CRDs, RBAC and webhook configurations; waits for the CRDs."""
    ca_bundle = base64.b64encode((layout.pki_dir / "ca.crt").read_bytes()).decode()
    rendered = hostmanager.kustomize(
        layout.bin_link / "kubectl", built / "jobset-config" / "default"
    )
    objects = manifests(rendered, layout.jobset_webhook_port, ca_bundle)
    hostmanager.apply_and_wait(layout, objects)


def is_healthy(layout: Layout) -> bool:
    return hostmanager.answers_ok(f"http://127.0.0.1:{layout.jobset_health_port}/readyz")


def is_running(layout: Layout) -> bool:
    return processes.running_pid(layout.pid_dir, PROCESS) is not None and is_healthy(layout)


def up(layout: Layout) -> None:
    """Installs JobSet into the running cluster and starts its manager (idempotent)."""
    started_at = time.monotonic()
    built = scalebuild.build()
    cert_dir = _write_certificates(layout)
    kubeconfig = layout.state_dir / "kubeconfigs" / "jobset.kubeconfig"
    cluster.write_kubeconfig(layout, kubeconfig, CLIENT)
    config_file = state_dir(layout) / "config.yaml"
    config_file.write_text(yaml.safe_dump(configuration(layout, cert_dir)))
    install(layout, built)
    if is_running(layout):
        return
    processes.stop(layout.pid_dir, PROCESS, grace=10)
    binary = built / "bin" / "jobset"
    # controller-runtime logs every reconcile at info: too much for a 1,000-JobSet benchmark.
    argv = [str(binary), f"--config={config_file}", "--zap-log-level=error"]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    process = processes.start(layout.pid_dir, layout.log_dir, PROCESS, argv, env, str(binary))
    deadline = time.monotonic() + 120
    while not is_healthy(layout):
        if process.poll() is not None:
            raise SystemExit(f"devcluster: jobset exited; see {layout.log_dir / 'jobset.log'}")
        if time.monotonic() > deadline:
            raise SystemExit("devcluster: jobset not ready after 120s")
        time.sleep(0.2)
    cluster.log(f"jobset started in {time.monotonic() - started_at:.1f}s")


def down(layout: Layout) -> None:
    """Stops the manager and removes its webhook configurations (its CRDs and objects stay)."""
    processes.stop(layout.pid_dir, PROCESS, grace=10)
    if cluster.is_healthy(layout, "kube-apiserver"):
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            hostmanager.kubectl(
                layout, "delete", kind, "-l=app.kubernetes.io/name=jobset", "--ignore-not-found"
            )


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
        print(f"jobset {'healthy' if running else 'stopped'}")
        if not running:
            sys.exit(1)


if __name__ == "__main__":
    main()
