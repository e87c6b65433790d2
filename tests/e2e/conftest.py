"""End-to-end fixtures: the operator installed with the chart, real data on a claim, and real
trainer jobs (DeepSpeed on CPU, gloo) on the local cluster."""

import copy
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from llmjob_devcluster import kueue as kueue_component
from llmjob_devcluster.layout import Layout
from tests.conftest import create_test_namespace
from tests.integration.helm_chart import (
    RESTRICTED,
    Helm,
    installed,
    operator_pod,
    operator_values,
)
from tests.integration.jobs import Jobs
from tests.integration.kueue_queues import Queues

REPO = Path(__file__).resolve().parents[2]
RELEASE = "llmjob-e2e"
# Every e2e job trains the same model on the same data: test 2 compares final weights.
TRAINING = {
    "maxSteps": 160,
    "seqLen": 64,
    "microBatchSize": 4,
    "learningRate": 0.002,
    "warmupSteps": 10,
    "minLearningRate": 0.0002,
    "precision": "fp32",
    "zeroStage": 2,
    "logIntervalSteps": 10,
}
CHECKPOINT_INTERVAL = 20


class Operator:
    """The chart-installed operator: where its pod and metrics are."""

    def __init__(self, api_client: client.ApiClient, namespace: str, values: dict[str, Any]):
        self.api_client = api_client
        self.namespace = namespace
        self.values = values

    def pod(self) -> client.V1Pod:
        return operator_pod(self.api_client, self.namespace, RELEASE)

    @property
    def metrics_url(self) -> str:
        return f"http://{self.pod().status.pod_ip}:{self.values['metricsPort']}/metrics"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text: str = response.read().decode()
            return text


@pytest.fixture(scope="module")
def e2e_operator(
    api_client: client.ApiClient,
    kubeconfig: Path,
    crd_installed: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """Installed per module, as a user would: `helm install`. One operator at a time."""
    namespace = f"llmjob-e2e-{uuid.uuid4().hex[:5]}"
    client.CoreV1Api(api_client).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
    )
    helm = Helm(kubeconfig, tmp_path_factory.mktemp("helm"))
    # A run killed before its teardown leaves its release (and cluster-scoped roles) behind,
    # and `make demo` leaves its operator installed: one operator reconciles at a time.
    for release in json.loads(helm.run("list", "--all-namespaces", "--output=json").stdout):
        if release["name"] == RELEASE or release["chart"].startswith("llmjob-operator-"):
            helm.run("uninstall", release["name"], "-n", release["namespace"], "--wait")
    values = operator_values(
        defaultTrainerImage="ghcr.io/llmjob/trainer:0.1.0-cpu",
        extraArgs=["--progress-interval=2"],
        rbac={"create": True, "userRoles": False},
    )
    with installed(helm, RELEASE, namespace, values):
        yield Operator(api_client, namespace, values)
    client.CoreV1Api(api_client).delete_namespace(namespace)


def restricted_namespace(core: client.CoreV1Api, name: str) -> str:
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=RESTRICTED))
    )
    return name


def prepare_data(kubectl_apply: Any, jobs: Jobs) -> None:
    """The demo's own data step (examples/demo-data.yaml): llmjob-prepare onto a claim."""
    batch = client.BatchV1Api(jobs.core.api_client)
    for document in yaml.safe_load_all((REPO / "examples" / "demo-data.yaml").read_text()):
        kubectl_apply(jobs.namespace, document)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = batch.read_namespaced_job("llmjob-demo-data", jobs.namespace).status
        if status.succeeded:
            return
        assert not status.failed, "data preparation failed"
        time.sleep(1)
    raise AssertionError("data preparation did not finish in 300s")


def trainer_job(name: str, **overrides: Any) -> dict[str, Any]:
    """examples/cpu-demo.yaml, sized for tests, with overrides merged into its spec."""
    document = yaml.safe_load((REPO / "examples" / "cpu-demo.yaml").read_text())
    document["metadata"] = {"name": name}
    spec = document["spec"]
    spec["training"] = copy.deepcopy(TRAINING)
    spec["checkpoint"] = {
        "size": "1Gi",
        "intervalSteps": CHECKPOINT_INTERVAL,
        "keepLast": 3,
        "saveTimeoutSeconds": 30,
    }
    spec["failurePolicy"] = {"maxRestarts": 3, "backoffSeconds": 1, "stallTimeoutSeconds": 60}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return document


@pytest.fixture
def kubectl_apply(api_client: client.ApiClient) -> Any:
    from kubernetes import utils

    def apply(namespace: str, document: dict[str, Any]) -> None:
        utils.create_from_dict(api_client, document, namespace=namespace)

    return apply


@pytest.fixture
def training_ns(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh restricted namespace: the trainer pods must pass the restricted PSS."""
    test_name = request.node.name[:30].lower().replace("_", "-").strip("-")
    name = restricted_namespace(core, f"e2e-{test_name}-{uuid.uuid4().hex[:5]}")
    yield name
    core.delete_namespace(name)


@pytest.fixture
def trainer_jobs(
    api_client: client.ApiClient, training_ns: str, e2e_operator: Operator, kubectl_apply: Any
) -> Jobs:
    jobs = Jobs(api_client, training_ns)
    prepare_data(kubectl_apply, jobs)
    return jobs


@pytest.fixture
def queued_training_ns(
    core: client.CoreV1Api, request: pytest.FixtureRequest, kueue: Layout
) -> Iterator[str]:
    """A fresh restricted namespace whose pods the real Kueue manages (it opts in by its
    label): the data Job's pods carry no queue name and run as without Kueue."""
    labels = {**RESTRICTED, kueue_component.MANAGED_NAMESPACE_LABEL: "true"}
    name = create_test_namespace(request, core, labels)
    yield name
    core.delete_namespace(name)


@pytest.fixture
def training_queues(api_client: client.ApiClient, queued_training_ns: str) -> Iterator[Queues]:
    """The test's own ClusterQueue, ResourceFlavor and LocalQueue (see Queues.create); removed
    before its namespace."""
    made = Queues(api_client, queued_training_ns)
    yield made
    print(f"\nKueue's view of {queued_training_ns}:\n{made.describe()}")
    made.delete()


@pytest.fixture
def queued_trainer_jobs(
    api_client: client.ApiClient,
    queued_training_ns: str,
    e2e_operator: Operator,
    kubectl_apply: Any,
) -> Jobs:
    jobs = Jobs(api_client, queued_training_ns)
    prepare_data(kubectl_apply, jobs)
    return jobs
