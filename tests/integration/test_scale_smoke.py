"""A small round of `make bench-scale` (bench/scale.py) in `make test`, so the benchmark does not
rot: KWOK's simulated GPU nodes, llmjob and JobSet side by side, two jobs of 8 workers each.

It also holds llmjob to its steady-state budget on the API server's own counters: no writes
for gangs that run and report nothing new (KWOK pods serve no /metrics)."""

from collections.abc import Iterator

import pytest
from kubernetes import client

from bench import scale
from llmjob_devcluster import jobset as jobset_component
from llmjob_devcluster import kwok
from llmjob_devcluster.layout import Layout

pytestmark = pytest.mark.integration

JOBS = 2


@pytest.fixture(scope="module")
def scale_cluster(devcluster: Layout, crd_installed: None) -> Iterator[Layout]:
    kwok.up(devcluster, nodes=JOBS * scale.WORKERS // scale.GPUS_PER_NODE)
    yield devcluster
    jobset_component.down(devcluster)
    kwok.down(devcluster)


def check(figures: scale.Round) -> None:
    print(f"\n{figures.system}: {figures.row()}\nsteady writes: {figures.steady_writes}")
    assert len(figures.startup) == len(figures.recovery) == JOBS
    assert all(0 < seconds < 60 for seconds in figures.startup + figures.recovery)
    assert figures.delete_seconds > 0 and figures.cpu_seconds > 0 and figures.peak_rss_mb > 0
    assert figures.unasked_restarts == 0, "a gang restarted that no failure was injected into"


def test_llmjob_gangs_start_recover_and_go_on_kwok_nodes_within_the_api_budget(
    scale_cluster: Layout, api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    system = scale.Llmjob(api_client, scale_cluster.kubeconfig, tmp_path_factory.mktemp("op"))
    figures = scale.run_round(api_client, scale_cluster, system, JOBS, steady_seconds=20)
    check(figures)
    # Running gangs with nothing new to report cost no writes (DESIGN §4: 0 per idle job). The
    # control plane's own controllers are not the operator: in a loaded CI run the endpoint
    # slice controller caught up on the jobs' Services inside the window.
    control_plane = "by system:serviceaccount:kube-system:"
    assert not [w for w in figures.steady_writes if control_plane not in w], figures.steady_writes


def test_jobset_does_the_same_work_beside_it(
    scale_cluster: Layout, api_client: client.ApiClient
) -> None:
    figures = scale.run_round(
        api_client, scale_cluster, scale.JobSet(api_client, scale_cluster), JOBS, steady_seconds=5
    )
    check(figures)
