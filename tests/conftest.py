"""Fixtures for tests on the local cluster (dev/, README "The local cluster").

`devcluster` is session-wide: it reuses a running cluster (as `make test` leaves one) or
starts one and stops it after the session (set LLMJOB_KEEP_CLUSTER=1 to keep it). Every
test that touches the cluster gets a fresh namespace, deleted afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from llmjob_devcluster import cluster, kube, processes, scalebuild
from llmjob_devcluster import kueue as kueue_component
from llmjob_devcluster.layout import REPO_ROOT, Layout

Obj = dict[str, Any]
T = TypeVar("T")


_head_starts: list[subprocess.Popen[bytes]] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """A session that will run Kueue (or KWOK and JobSet) starts building it now (a no-op once
    cached), niced: the build takes the CPU the tests before it leave idle (they mostly wait on
    clusters and workers) instead of adding its minutes on a fresh machine at the first test
    that needs it, whose fixture then waits only for what is left of it."""
    cache = Path(os.environ.get("LLMJOB_CACHE", "/var/cache/llmjob"))
    fixtures = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "kueue" in fixtures:
        _head_starts.append(kueue_component.start_build(cache / "kueue-build.log"))
    if fixtures & {"scale_cluster", "kwok_nodes"}:
        _head_starts.append(scalebuild.start_build(cache / "scale-build.log"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    for build in _head_starts:
        if build.poll() is None:
            processes.signal_group(build.pid, signal.SIGTERM)
            build.wait()


@pytest.fixture(scope="session")
def devcluster() -> Iterator[Layout]:
    layout = Layout.from_env()
    was_running = all(
        processes.running_pid(layout.pid_dir, name) is not None and cluster.is_healthy(layout, name)
        for name in cluster.COMPONENTS
    )
    if not was_running:
        cluster.up(layout)
    yield layout
    if not was_running and not os.environ.get("LLMJOB_KEEP_CLUSTER"):
        cluster.down(layout)


@pytest.fixture(scope="session")
def kubeconfig(devcluster: Layout) -> Path:
    return devcluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> client.ApiClient:
    return kube.api_client(kubeconfig)


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def create_test_namespace(
    request: pytest.FixtureRequest, core: client.CoreV1Api, labels: dict[str, str] | None = None
) -> str:
    """A fresh namespace named after the test, ready for pods (its default ServiceAccount
    exists); labelled from the start, so every controller sees the labels it is made with."""
    test_name = request.node.name[:40].lower().replace("_", "-").strip("-")
    name = f"t-{test_name}-{uuid.uuid4().hex[:5]}"
    metadata = {"name": name, "labels": labels or {}}
    core.create_namespace(kube.model(client.V1Namespace, {"metadata": metadata}))
    wait_for(
        lambda: _exists(lambda: core.read_namespaced_service_account("default", name)),
        timeout=30,
        what=f"default ServiceAccount in {name}",
    )
    return name


@pytest.fixture
def namespace(request: pytest.FixtureRequest, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace, ready for pods (its default ServiceAccount exists)."""
    name = create_test_namespace(request, core)
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def crd_installed(kubectl: list[str]) -> None:
    """The CRD as the README installs it: `kubectl apply --server-side --force-conflicts`
    (helm never upgrades crds/), so a cluster kept from an older checkout gets this one."""
    crd = REPO_ROOT / "crds" / "llmtrainingjobs.training.llmjob.dev.yaml"
    subprocess.run(
        [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(crd)], check=True
    )
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "-f", str(crd), "--timeout=60s"],
        check=True,
    )


@pytest.fixture(scope="session")
def kubectl(devcluster: Layout) -> list[str]:
    """The command line of the pinned kubectl (built with the cluster) for this cluster."""
    return [str(devcluster.bin_link / "kubectl"), f"--kubeconfig={devcluster.kubeconfig}"]


@pytest.fixture(scope="session")
def kueue(devcluster: Layout) -> Iterator[Layout]:
    """The real Kueue on the local cluster: built on first use (cached), installed, its manager
    started; stopped after the session unless it was running before (or LLMJOB_KEEP_CLUSTER).
    Here for the integration and the end-to-end tests both; it manages pods only in namespaces
    labelled kueue_component.MANAGED_NAMESPACE_LABEL=true."""
    was_running = kueue_component.is_running(devcluster)
    kueue_component.up(devcluster)
    yield devcluster
    if not was_running and not os.environ.get("LLMJOB_KEEP_CLUSTER"):
        kueue_component.down(devcluster)


@pytest.fixture
def priority_classes(api_client: client.ApiClient) -> Iterator[dict[str, str]]:
    """A low and a high PriorityClass of the test's own (cluster-scoped: named uniquely); Kueue
    takes a pod group's priority from its pods' class."""
    scheduling = client.SchedulingV1Api(api_client)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    names = {level: f"{prefix}-{level}" for level in ("low", "high")}
    for level, value in (("low", 100), ("high", 1000)):
        body = {"metadata": {"name": names[level]}, "value": value}
        scheduling.create_priority_class(kube.model(client.V1PriorityClass, body))
    yield names
    for name in names.values():
        scheduling.delete_priority_class(name)


def _exists(read: Callable[[], object]) -> bool:
    try:
        read()
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Polls until `predicate` returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def read_pod(
    api: client.ApiClient, core: client.CoreV1Api, name: str, namespace: str
) -> Obj | None:
    """The pod as a manifest-shaped dict, or None once it is gone."""
    try:
        return kube.as_dict(api, core.read_namespaced_pod(name, namespace))
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def container_logs(layout: Layout, namespace: str, pod: str, container: str) -> str:
    """A container's log as the node agent wrote it (still there after the pod is gone)."""
    paths = sorted(Path(layout.log_dir / "pods").glob(f"{namespace}_{pod}_*/{container}/*.log"))
    return "".join(path.read_text() for path in paths)
