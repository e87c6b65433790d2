"""scheduling.gang Native with the real kube-scheduler (GenericWorkload, KEP-4671): on nodes
that hold 3 workers, of two 2-worker gangs one runs whole and the other binds no pod at all;
without the gang option the same two jobs split the room, one worker of one job Pending."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE
from llmjob_operator.api import GROUP, PLURAL, VERSION
from llmjob_operator.render import JOB_NAME_LABEL, JobRef, pod_group_name
from tests import apiserver_requests
from tests.conftest import wait_for
from tests.integration.jobs import Jobs, standin_job

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"
ROOM = 3  # workers the stand-in nodes hold in all: one gang of 2 fits, two do not
JOBS = ("first", "second")
OBSERVE_SECONDS = 5


def _gpus(pod: client.V1Pod) -> int:
    return sum(
        int((c.resources.limits or {}).get(GPU, 0) if c.resources else 0)
        for c in pod.spec.containers
    )


def _free_gpus(core: client.CoreV1Api, nodes: list[str]) -> dict[str, int]:
    """Allocatable GPUs less what live pods on the node hold (the scheduler's view)."""
    free = {n: int(core.read_node(n).status.allocatable.get(GPU, 0)) for n in nodes}
    for pod in core.list_pod_for_all_namespaces().items:
        if pod.spec.node_name in free and pod.status.phase not in ("Succeeded", "Failed"):
            free[pod.spec.node_name] -= _gpus(pod)
    return free


def _filler(name: str, node: str, gpus: int) -> dict[str, Any]:
    """A pod bound to `node` by name (past the scheduler, which still counts it) holding GPUs."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "hold",
                    "image": HOST_ENVIRONMENT_IMAGE,
                    "command": ["sleep", "3600"],
                    "resources": {"limits": {GPU: str(gpus)}},
                }
            ],
        },
    }


@pytest.fixture
def gpus_per_worker(core: client.CoreV1Api, namespace: str) -> Iterator[int]:
    """GPUs per worker such that the untainted nodes hold exactly ROOM workers: half the
    smallest node, with what is left over beyond ROOM held by filler pods. Afterwards the
    namespace's pods are all gone, so the next test finds the GPUs free."""
    nodes = sorted(n.metadata.name for n in core.list_node().items if not n.spec.taints)
    free = _free_gpus(core, nodes)
    per_worker = min(free.values()) // 2
    assert per_worker >= 1 and sum(g // per_worker for g in free.values()) >= ROOM, free
    fillers = 0
    while sum(g // per_worker for g in free.values()) > ROOM:
        node = max(free, key=lambda n: free[n] // per_worker)
        core.create_namespaced_pod(namespace, _filler(f"filler-{fillers}", node, per_worker))
        free[node] -= per_worker
        fillers += 1
    yield per_worker
    custom = client.CustomObjectsApi(core.api_client)
    for job in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, job["metadata"]["name"]
        )
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    wait_for(
        lambda: not core.list_namespaced_pod(namespace).items,
        timeout=60,
        what=f"the pods of {namespace} gone",
    )


def _bound(jobs: Jobs) -> dict[str, int]:
    """Per job, its workers with a node."""
    return {job: sum(1 for p in jobs.pods(job) if p.spec.node_name) for job in JOBS}


def _submit(jobs: Jobs, venv_bin: str, gpus: int, scheduling: dict[str, Any]) -> dict[str, str]:
    uids = {}
    for name in JOBS:
        body = standin_job(
            name,
            venv_bin,
            workers=2,
            gpusPerWorker=gpus,
            scheduling=scheduling,
            standin={"steps": 600},
        )
        uids[name] = jobs.create(body)["metadata"]["uid"]
    wait_for(
        lambda: all(len(jobs.pods(name)) == 2 for name in JOBS), timeout=30, what="all 4 workers"
    )
    return uids


def _watch(jobs: Jobs, seconds: float) -> list[dict[str, int]]:
    """The bound workers per job, sampled over `seconds`."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(_bound(jobs))
        time.sleep(0.5)
    return samples


def test_native_gangs_bind_one_whole_gang_and_nothing_of_the_other(
    jobs: Jobs, venv_bin: str, gpus_per_worker: int, api_client: client.ApiClient
) -> None:
    before = apiserver_requests.snapshot(api_client)
    uids = _submit(jobs, venv_bin, gpus_per_worker, {"gang": "Native"})
    custom = client.CustomObjectsApi(api_client)
    for name, uid in uids.items():
        group = custom.get_namespaced_custom_object(
            "scheduling.k8s.io",
            "v1beta1",
            jobs.namespace,
            "podgroups",
            pod_group_name(JobRef(name, jobs.namespace, uid), 1),
        )
        (owner,) = group["metadata"]["ownerReferences"]
        assert owner["uid"] == uid and owner["controller"] is True
        assert group["metadata"]["labels"][JOB_NAME_LABEL] == name
        assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 2}}
        for pod in jobs.pods(name):
            raw = jobs.core.read_namespaced_pod(
                pod.metadata.name, jobs.namespace, _preload_content=False
            ).json()
            assert raw["spec"]["schedulingGroup"] == {"podGroupName": group["metadata"]["name"]}

    def a_whole_gang() -> dict[str, int] | None:
        bound = _bound(jobs)
        return bound if 2 in bound.values() else None

    placed = wait_for(a_whole_gang, timeout=30, what="a whole gang")
    whole = next(job for job, n in placed.items() if n == 2)
    other = next(job for job in JOBS if job != whole)
    samples = _watch(jobs, OBSERVE_SECONDS)
    assert all(s == {whole: 2, other: 0} for s in samples), samples
    jobs.wait_phase(whole, "Running", timeout=30)
    assert jobs.status(other).get("phase") == "Pending"
    # One create per attempt's group, and no update of a group while the attempts wait or run
    # (the operator updates by server-side apply; the scheduler writes podgroups/status). The
    # counters are cluster-wide: the controller manager's finalizer removal (PATCH) and the
    # namespace controller's collection deletes of earlier tests' namespaces are theirs.
    delta = apiserver_requests.since(api_client, before)
    creates = apiserver_requests.count(delta, verbs={"POST"}, resource="podgroups", subresource="")
    applies = apiserver_requests.count(delta, verbs={"APPLY"}, resource="podgroups", subresource="")
    assert (creates, applies) == (len(JOBS), 0), delta


def test_without_the_gang_option_both_jobs_are_placed_in_part(
    jobs: Jobs, venv_bin: str, gpus_per_worker: int
) -> None:
    _submit(jobs, venv_bin, gpus_per_worker, {})
    wait_for(lambda: sum(_bound(jobs).values()) == ROOM, timeout=30, what=f"{ROOM} bound")
    samples = _watch(jobs, OBSERVE_SECONDS)
    assert all(sorted(s.values()) == [1, 2] for s in samples), samples
    partial = next(job for job, n in samples[-1].items() if n == 1)
    pending = [p for p in jobs.pods(partial) if not p.spec.node_name]
    assert len(pending) == 1 and pending[0].status.phase == "Pending"
