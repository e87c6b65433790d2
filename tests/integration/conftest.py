"""Fixtures for tests against the local cluster: the operator running, the CRD installed.
The cluster itself, clients, kubectl and namespaces come from tests/conftest.py."""

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from llmjob_devcluster import kueue as kueue_component
from llmjob_devcluster.layout import Layout
from tests.conftest import create_test_namespace, wait_for
from tests.integration.helm_chart import RESTRICTED, Helm, create_namespace
from tests.integration.jobs import Jobs
from tests.integration.kueue_queues import Queues
from tests.integration.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def venv_bin() -> str:
    return str(Path(sys.executable).parent)


# Per module: no other test module (the chart's in-cluster operator) may share the cluster
# with a second operator reconciling the same jobs.
@pytest.fixture(scope="module")
def llmjob_operator(
    kubeconfig: Path, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    operator = OperatorProcess(kubeconfig, log)
    operator.start()
    yield operator
    operator.stop()
    print(f"\noperator log ({log}):\n{operator.tail(200)}")


@pytest.fixture
def jobs(
    api_client: client.ApiClient, namespace: str, llmjob_operator: OperatorProcess
) -> Iterator[Jobs]:
    yield Jobs(api_client, namespace)
    if llmjob_operator.process is None or llmjob_operator.process.poll() is not None:
        llmjob_operator.start()


# -- the Helm chart's tests (test_helm*.py) ---------------------------------------------


@pytest.fixture(scope="session")
def helm(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(kubeconfig, tmp_path_factory.mktemp("helm"))


@pytest.fixture
def restricted_namespaces(api_client: client.ApiClient) -> Iterator[Callable[[str], str]]:
    """Makes namespaces that enforce the restricted Pod Security Standard; deletes them."""
    created: list[str] = []
    suffix = uuid.uuid4().hex[:5]

    def make(prefix: str) -> str:
        name = create_namespace(api_client, f"{prefix}-{suffix}", RESTRICTED)
        created.append(name)
        # Pods are admitted only once the namespace's default ServiceAccount exists.
        core = client.CoreV1Api(api_client)
        wait_for(
            lambda: any(
                sa.metadata.name == "default"
                for sa in core.list_namespaced_service_account(name).items
            ),
            timeout=30,
            what=f"default ServiceAccount in {name}",
        )
        return name

    yield make
    for name in created:
        client.CoreV1Api(api_client).delete_namespace(name)


# -- Kueue (test_kueue*.py) -----------------------------------------------------------------


@pytest.fixture
def kueue_namespace(
    request: pytest.FixtureRequest, core: client.CoreV1Api, kueue: Layout
) -> Iterator[str]:
    """A fresh namespace whose pods Kueue manages (it opts in by its label)."""
    name = create_test_namespace(request, core, {kueue_component.MANAGED_NAMESPACE_LABEL: "true"})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def queues(api_client: client.ApiClient, kueue_namespace: str) -> Iterator[Queues]:
    """The test's own ClusterQueue, ResourceFlavor and LocalQueue (see Queues.create)."""
    made = Queues(api_client, kueue_namespace)
    yield made
    print(f"\nKueue's view of {kueue_namespace}:\n{made.describe()}")
    made.delete()
