"""Helpers for the chart's tests: the real helm binary against the local cluster."""

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE
from tests.integration.operator_process import free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "llmjob-operator"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


class Helm:
    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        self.binary = str(kubeconfig.parent / "bin" / "helm")
        self.kubeconfig = kubeconfig
        self.workdir = workdir

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, f"--kubeconfig={self.kubeconfig}", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def values_file(self, values: dict[str, Any]) -> str:
        path = self.workdir / f"values-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(values))
        return str(path)

    def template(
        self, values: dict[str, Any], namespace: str = "llmjob-system", release: str = "llmjob"
    ) -> list[dict[str, Any]]:
        out = self.run(
            "template", release, str(CHART), "-n", namespace, "-f", self.values_file(values)
        ).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def install_monitoring_crds(kubectl: list[str]) -> None:
    """prometheus-operator's ServiceMonitor, PodMonitor and PrometheusRule CRDs, so that the
    API server validates the chart's monitors and rules against their real schemas."""
    crds = subprocess.run(
        ["bash", str(REPO / "dev" / "prometheus-operator-crds.sh")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for kind in ("servicemonitors", "podmonitors", "prometheusrules"):
        path = f"{crds}/monitoring.coreos.com_{kind}.yaml"
        subprocess.run([*kubectl, "apply", "--server-side", "-f", path], check=True)
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "-f", path, "--timeout=60s"],
            check=True,
        )


def operator_values(**values: Any) -> dict[str, Any]:
    """Values for an install on the local cluster: pods share the host's network, so the
    operator's ports must be free ones, not the defaults another operator may hold, and one
    replica (a second would bind the same ports; tests/integration/test_operator_ha.py runs
    two replicas as host processes, the chart's defaults are checked as rendered). A killed
    sole replica's container waits out its predecessor's lease before it acts: a 6 s lease
    (not 15) keeps the crash tests' waits short. The
    API server calls the webhook at 127.0.0.1: no EndpointSlice takes a loopback pod IP, so
    the chart's default (the Service) has no endpoint here. The operator runs from the chart's
    default image (`make images` built it); jobs without an image get the host environment,
    where the stand-in workers run."""
    port = free_port()
    webhook = {
        "port": port,
        "url": f"https://127.0.0.1:{port}/validate-llmtrainingjob",
        **values.pop("webhook", {}),
    }
    return {
        "replicaCount": 1,
        "leaderElection": {
            "leaseDurationSeconds": 6,
            "renewDeadlineSeconds": 4,
            "retryPeriodSeconds": 1,
        },
        "metricsPort": free_port(),
        "healthPort": free_port(),
        "defaultTrainerImage": HOST_ENVIRONMENT_IMAGE,
        "webhook": webhook,
        **values,
    }


@contextlib.contextmanager
def installed(
    helm: Helm, release: str, namespace: str, values: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """`helm install --wait`; uninstalls (also when the test fails). Yields the values.
    The CRD is the `crd_installed` fixture's, applied as the README says (helm's crds/ are
    installed once and never upgraded)."""
    helm.run(
        "install", release, str(CHART), "-n", namespace, "-f", helm.values_file(values),
        "--skip-crds", "--wait", "--timeout=180s",
    )  # fmt: skip
    try:
        yield values
    finally:
        helm.run("uninstall", release, "-n", namespace, "--wait", "--timeout=120s", check=False)


def create_namespace(api_client: client.ApiClient, name: str, labels: dict[str, str]) -> str:
    client.CoreV1Api(api_client).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    return name


def operator_pod(api_client: client.ApiClient, namespace: str, release: str) -> client.V1Pod:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    pods = (
        client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=selector).items
    )
    running = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
    assert len(running) == 1, [(p.metadata.name, p.status.phase) for p in pods]
    return running[0]


def kubectl_json(kubectl: list[str], *args: str) -> Any:
    out = subprocess.run(
        [*kubectl, *args, "-o", "json"], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
