"""A real Prometheus (Debian's) on loopback, and the pod discovery it lacks.

Debian builds Prometheus without Kubernetes discovery, so PodDiscovery lists the pods and
hands Prometheus file-based targets carrying the same `__meta_kubernetes_pod_*` labels.
Used by the chart's monitoring tests and the end-to-end observability test.
"""

import json
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.integration.helm_chart import REPO
from tests.integration.operator_process import free_port


def install_prometheus() -> None:
    """Debian's prometheus and promtool, installed by the same script CI runs."""
    subprocess.run(["bash", str(REPO / "dev" / "install-prometheus.sh")], check=True)


def label_name(label: str) -> str:
    """A Kubernetes label key as Prometheus's discovery meta label suffix."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


class PodDiscovery:
    """Kubernetes pod discovery for Prometheus, through file_sd: every second, each scrape
    job's file lists one target per named container port of each pod with an IP in the
    job's namespaces (None: all), labelled as Prometheus's `role: pod` discovery does."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.jobs: list[tuple[Path, list[str] | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, targets: Path, namespaces: list[str] | None) -> Path:
        self.jobs.append((targets, namespaces))
        self._write(targets, namespaces)
        return targets

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for targets, namespaces in self.jobs:
                self._write(targets, namespaces)

    def _pods(self, namespaces: list[str] | None) -> list[client.V1Pod]:
        if namespaces is None:
            items: list[client.V1Pod] = self.core.list_pod_for_all_namespaces().items
            return items
        return [p for n in namespaces for p in self.core.list_namespaced_pod(n).items]

    def _write(self, targets: Path, namespaces: list[str] | None) -> None:
        groups = []
        for pod in self._pods(namespaces):
            if not pod.status.pod_ip:
                continue
            meta = {
                "__meta_kubernetes_namespace": pod.metadata.namespace,
                "__meta_kubernetes_pod_name": pod.metadata.name,
                "__meta_kubernetes_pod_phase": pod.status.phase,
            }
            for key, value in (pod.metadata.labels or {}).items():
                meta[f"__meta_kubernetes_pod_label_{label_name(key)}"] = value
                meta[f"__meta_kubernetes_pod_labelpresent_{label_name(key)}"] = "true"
            for container in pod.spec.containers:
                for port in container.ports or []:
                    groups.append(
                        {
                            "targets": [f"{pod.status.pod_ip}:{port.container_port}"],
                            "labels": {
                                **meta,
                                "__meta_kubernetes_pod_container_name": container.name,
                                "__meta_kubernetes_pod_container_port_name": port.name or "",
                            },
                        }
                    )
        partial = targets.with_suffix(".partial")
        partial.write_text(json.dumps(groups))
        partial.rename(targets)


class Prometheus:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={self.workdir / 'prometheus.yaml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                    return
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def firing(self) -> set[tuple[str, str]]:
        return {
            (alert["labels"]["alertname"], alert["labels"].get("job_name", ""))
            for alert in self.api("alerts")["alerts"]
            if alert["state"] == "firing"
        }

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                targets = [
                    (t["labels"].get("pod"), t["health"], t.get("lastError"))
                    for t in self.api("targets")["activeTargets"]
                ]
                series = self.query(
                    '{__name__=~"llmjob_operator_job_restarts|llmjob_trainer_step"}'
                )
                raise AssertionError(
                    f"{what} after {timeout}s; firing: {self.firing()}; targets: {targets}; "
                    f"series: {[(s['metric'], s['value']) for s in series]}"
                )
            time.sleep(2)
