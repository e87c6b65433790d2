"""scheduling.topology with the real kube-scheduler: a gang lands in one domain of the label,
and only on nodes that carry the label."""

from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.integration.jobs import Jobs, standin_job

pytestmark = pytest.mark.integration

RACK_LABEL = "test.llmjob.dev/rack"


@pytest.fixture
def one_labelled_node(core: client.CoreV1Api) -> Iterator[tuple[str, list[str]]]:
    """(the node labelled with RACK_LABEL, the untainted stand-in nodes); the label is removed
    afterwards."""
    nodes = sorted(n.metadata.name for n in core.list_node().items if not n.spec.taints)
    assert len(nodes) >= 2, nodes
    labelled = nodes[-1]
    core.patch_node(labelled, {"metadata": {"labels": {RACK_LABEL: "rack-1"}}})
    yield labelled, nodes
    core.patch_node(labelled, {"metadata": {"labels": {RACK_LABEL: None}}})


def test_a_gang_with_a_topology_key_runs_in_one_domain_on_labelled_nodes_only(
    jobs: Jobs, venv_bin: str, core: client.CoreV1Api, one_labelled_node: tuple[str, list[str]]
) -> None:
    labelled, nodes = one_labelled_node
    gpus = min(int(core.read_node(n).status.allocatable["nvidia.com/gpu"]) for n in nodes)
    # Two workers of half a node each: both fit on the one labelled node, and nowhere else
    # may either go, though the unlabelled nodes are emptier.
    jobs.create(
        standin_job(
            "racked",
            venv_bin,
            gpusPerWorker=gpus // 2,
            scheduling={"topology": {"key": RACK_LABEL}},
            standin={"steps": 3},
        )
    )
    jobs.wait_phase("racked", "Running", timeout=90)
    placed = {p.metadata.name: p.spec.node_name for p in jobs.pods("racked")}
    assert placed == {"racked-worker-0": labelled, "racked-worker-1": labelled}
    jobs.wait_phase("racked", "Succeeded", timeout=90)
