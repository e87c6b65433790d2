"""A reconcile that runs before the watch has shown the pods it just created (client-go's
expectations), against the real API server: the controller is driven directly, its cache fed by
the test as a lagging watch would feed it."""

import copy
from collections.abc import Iterator

import pytest
from kubernetes import client

from llmjob_operator.api import GROUP, PLURAL, VERSION
from llmjob_operator.controller import Controller
from llmjob_operator.expectations import CreateExpectations
from llmjob_operator.kube import ClientLimits, Kube
from llmjob_operator.progress import ProgressReader
from llmjob_operator.settings import OperatorSettings
from llmjob_operator.store import JobKey, Store
from tests.integration.jobs import standin_job

pytestmark = pytest.mark.integration


@pytest.fixture
def progress() -> Iterator[ProgressReader]:
    reader = ProgressReader(
        wake=lambda key: None,
        interval_seconds=10.0,
        concurrency=1,
        deadline_seconds=1.0,
        max_bytes=1 << 20,
    )
    yield reader
    reader.stop()


def running(pod: dict[str, object]) -> dict[str, object]:
    """The pod as the watch shows it once its kubelet reports it started."""
    seen = copy.deepcopy(pod)
    seen["status"] = {
        "phase": "Running",
        "containerStatuses": [
            {"name": "trainer", "state": {"running": {"startedAt": "2026-12-04T00:00:00Z"}}}
        ],
    }
    return seen


def test_a_reconcile_before_the_watch_shows_a_created_pod_restarts_nothing(
    api_client: client.ApiClient,
    namespace: str,
    crd_installed: None,
    venv_bin: str,
    progress: ProgressReader,
) -> None:
    custom = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    body = standin_job("lagging", venv_bin, workers=2)
    # No node has this label: the pods stay Pending, whatever the cluster does with them.
    body["spec"]["scheduling"] = {"nodeSelector": {"llmjob.test/none": "true"}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    key: JobKey = (namespace, "lagging")
    store = Store()
    store.put_job(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "lagging"))
    expected = CreateExpectations()
    settings = OperatorSettings(
        namespaces=(namespace,),
        default_image="llmjob.local/host-environment:latest",
        metrics_port=0,
        health_port=0,
        workers=1,
        progress_interval_seconds=10.0,
        log_level="INFO",
    )
    controller = Controller(store, settings, "test", progress, expected)
    kube = Kube(ClientLimits(), api_client)

    controller.reconcile(kube, key)  # attempt 1: the status, then both pods
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
    assert sorted(pods) == ["lagging-worker-0", "lagging-worker-1"]
    # The watch has shown worker 0, already Running, and not yet worker 1.
    worker_0 = api_client.sanitize_for_serialization(pods["lagging-worker-0"])
    store.put_owned("Pod", running(worker_0))
    expected.observed(key, "lagging-worker-0")
    assert expected.pending(key, lambda pod: store.cached("Pod", namespace, pod) is not None)

    controller.reconcile(kube, key)  # planned from this cache, worker 1 would read as vanished

    after = {p.metadata.name: p.metadata for p in core.list_namespaced_pod(namespace).items}
    assert {name: m.uid for name, m in after.items()} == {
        name: p.metadata.uid for name, p in pods.items()
    }
    assert not any(m.deletion_timestamp for m in after.values())
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "lagging")
    assert status["status"]["attempt"] == 1 and status["status"].get("restarts", 0) == 0

    # Worker 1's event arrives: the job is planned again, and the gang is whole.
    worker_1 = api_client.sanitize_for_serialization(pods["lagging-worker-1"])
    store.put_owned("Pod", worker_1)
    expected.observed(key, "lagging-worker-1")
    assert not expected.pending(key, lambda pod: False)
    store.put_job(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "lagging"))
    controller.reconcile(kube, key)
    assert {p.metadata.uid for p in core.list_namespaced_pod(namespace).items} == {
        p.metadata.uid for p in pods.values()
    }
