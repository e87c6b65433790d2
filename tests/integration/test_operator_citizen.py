"""The operator as a good citizen of a shared cluster (issue 14), against the real API server:
its API budget read from kube-apiserver's own counters, ownership by UID, tenants that abuse
/metrics, unreadable progress, fast restarts and node loss. Stand-in workers."""

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client

from llmjob_devcluster import cluster
from llmjob_devcluster.layout import Layout
from tests import apiserver_requests
from tests.conftest import wait_for
from tests.integration.jobs import Jobs, condition, standin_job
from tests.integration.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

PROGRESS_INTERVAL = 2.0
# The survivor's failure step in the node-loss test: well after the node is seen lost (its
# Lease unrenewed for LEASE_STALE_SECONDS; the agent renews every 2 s, a step takes 1 s).
SURVIVOR_FAILS_AT = 14
LEASE_STALE_SECONDS = 5
WINDOW_SECONDS = 60


@pytest.fixture(scope="module")
def llmjob_operator(
    kubeconfig: Path, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """This module's own operator: a short resync, so relists are seen within a test."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    operator = OperatorProcess(
        kubeconfig, log, PROGRESS_INTERVAL, extra_args=("--resync-interval=5",)
    )
    operator.start()
    yield operator
    operator.stop()
    print(f"\noperator log ({log}):\n{operator.tail(200)}")


def job_writes(delta: "apiserver_requests.Counter[apiserver_requests.Request]") -> dict[str, int]:
    """Writes only the operator makes: jobs and their status, pods (not their status, which
    the node agent writes), the job's Service, ConfigMap and claim."""
    return {
        "status": apiserver_requests.count(
            delta, verbs=apiserver_requests.WRITES, resource="llmtrainingjobs", subresource="status"
        ),
        "jobs": apiserver_requests.count(
            delta, verbs=apiserver_requests.WRITES, resource="llmtrainingjobs", subresource=""
        ),
        "pods": apiserver_requests.count(
            delta, verbs=apiserver_requests.WRITES, resource="pods", subresource=""
        ),
        "configmaps": apiserver_requests.count(
            delta, verbs=apiserver_requests.WRITES, resource="configmaps"
        ),
        "services": apiserver_requests.count(
            delta, verbs=apiserver_requests.WRITES, resource="services"
        ),
    }


def no_namespace_terminating(core: client.CoreV1Api) -> None:
    """Earlier tests' namespaces are deleted as they end; the namespace controller's deletes
    (and the operator's reactions to them) must not land in a measured window."""
    wait_for(
        lambda: all(ns.status.phase != "Terminating" for ns in core.list_namespace().items),
        180,
        "earlier tests' namespaces to be gone",
    )


def test_a_running_job_writes_its_status_at_most_once_per_progress_interval(
    jobs: Jobs, venv_bin: str, api_client: client.ApiClient
) -> None:
    jobs.create(standin_job("steady", venv_bin, standin={"steps": 600, "step_seconds": 0.5}))
    jobs.wait("steady", lambda s: (s.get("progress") or {}).get("step", 0) >= 2, what="steps")
    no_namespace_terminating(jobs.core)
    before = apiserver_requests.snapshot(api_client)
    started = time.monotonic()
    time.sleep(WINDOW_SECONDS)
    writes = job_writes(apiserver_requests.since(api_client, before))
    elapsed = time.monotonic() - started
    assert jobs.status("steady")["phase"] == "Running"
    budget = elapsed / PROGRESS_INTERVAL + 3
    print(f"\nFIGURES budget: {writes} in {elapsed:.0f}s (status budget {budget:.0f})")
    assert writes["status"] <= budget, writes
    assert writes["status"] >= 5, f"progress was not reported at all: {writes}"
    assert writes["pods"] == writes["configmaps"] == writes["services"] == writes["jobs"] == 0


def test_suspended_and_finished_jobs_write_nothing(
    jobs: Jobs, venv_bin: str, api_client: client.ApiClient
) -> None:
    jobs.create(standin_job("done", venv_bin, standin={"steps": 2}))
    jobs.create(standin_job("parked", venv_bin, runPolicy={"suspend": True}))
    jobs.wait_phase("done", "Succeeded")
    jobs.wait_phase("parked", "Suspended")
    no_namespace_terminating(jobs.core)
    before = apiserver_requests.snapshot(api_client)
    time.sleep(WINDOW_SECONDS)
    writes = job_writes(apiserver_requests.since(api_client, before))
    print(f"\nFIGURES idle jobs: {writes} in {WINDOW_SECONDS}s")
    assert writes == dict.fromkeys(writes, 0), writes


def test_a_foreign_config_map_blocks_the_job_and_is_never_modified(
    jobs: Jobs, venv_bin: str
) -> None:
    foreign = jobs.core.create_namespaced_config_map(
        jobs.namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="taken-config"), data={"owner": "someone else"}
        ),
    )
    jobs.create(standin_job("taken", venv_bin))
    blocked = jobs.wait(
        "taken",
        lambda s: (condition(s, "ReconcileError") or {}).get("reason") == "ForeignObject",
        timeout=60,
    )
    message = condition(blocked, "ReconcileError")["message"]
    assert "ConfigMap taken-config" in message and "not controlled by this job" in message
    assert "ForeignObject" in {e.reason for e in jobs.events("taken")}
    time.sleep(5)
    now = jobs.core.read_namespaced_config_map("taken-config", jobs.namespace)
    assert now.metadata.resource_version == foreign.metadata.resource_version
    assert now.data == {"owner": "someone else"}
    assert not jobs.pods("taken")
    # Once the owner removes it, the job goes on by itself.
    jobs.core.delete_namespaced_config_map("taken-config", jobs.namespace)
    done = jobs.wait_phase("taken", "Succeeded", timeout=240)
    assert condition(done, "ReconcileError") is None


def test_a_job_recreated_under_an_old_name_trains_anew_with_its_own_pods(
    jobs: Jobs, venv_bin: str
) -> None:
    jobs.create(standin_job("again", venv_bin, standin={"steps": 2}))
    first = jobs.wait_phase("again", "Succeeded")
    assert first["attempt"] == 1
    # Orphan the finished pods: same names, same labels, no owner. The next job of that name
    # must neither count them as its own nor touch them.
    jobs.custom.delete_namespaced_custom_object(
        "training.llmjob.dev",
        "v1alpha1",
        jobs.namespace,
        "llmtrainingjobs",
        "again",
        propagation_policy="Orphan",
    )
    jobs.wait_gone("again")
    leftovers = {p.metadata.name: p.metadata.uid for p in jobs.pods("again")}
    assert leftovers, "the orphaned pods should still be there"
    new = jobs.create(standin_job("again", venv_bin, standin={"steps": 3}))
    blocked = jobs.wait(
        "again",
        lambda s: (condition(s, "ReconcileError") or {}).get("reason") == "ForeignObject",
        timeout=60,
    )
    assert blocked.get("phase") != "Succeeded"
    # Orphaning also left the Service and ConfigMap ownerless: the owner of the leftovers
    # removes them all, and the job goes on by itself.
    for name in leftovers:
        jobs.core.delete_namespaced_pod(name, jobs.namespace, grace_period_seconds=0)
    jobs.core.delete_namespaced_service("again", jobs.namespace)
    jobs.core.delete_namespaced_config_map("again-config", jobs.namespace)
    done = jobs.wait_phase("again", "Succeeded", timeout=240)
    assert (done["attempt"], done["restarts"]) == (1, 0)
    owners = {p.metadata.name: p.metadata.owner_references[0].uid for p in jobs.pods("again")}
    assert set(owners.values()) == {new["metadata"]["uid"]}
    assert not set(leftovers.values()) & {p.metadata.uid for p in jobs.pods("again")}


def test_unreadable_metrics_mean_progress_unknown_never_a_restart(
    jobs: Jobs, venv_bin: str
) -> None:
    jobs.create(
        standin_job(
            "dark",
            venv_bin,
            standin={"steps": 120, "metrics": "none"},
            failurePolicy={"stallTimeoutSeconds": 5, "backoffSeconds": 1},
        )
    )
    unknown = jobs.wait(
        "dark",
        lambda s: (condition(s, "ProgressUnknown") or {}).get("status") == "True",
        timeout=120,
    )
    assert unknown["phase"] == "Running"
    time.sleep(20)  # four stall time-outs
    status = jobs.status("dark")
    assert (status["attempt"], status["restarts"], status["disruptions"]) == (1, 0, 0)
    assert status.get("lastFailure") is None


def test_hostile_rank0s_cannot_hold_up_another_jobs_restart(
    jobs: Jobs, venv_bin: str, llmjob_operator: OperatorProcess
) -> None:
    rss_before = llmjob_operator.rss_bytes()
    for name, mode in (("trickle", "trickle"), ("flood", "huge")):
        jobs.create(standin_job(name, venv_bin, standin={"steps": 600, "metrics": mode}))
    for name in ("trickle", "flood"):
        jobs.wait_phase(name, "Running", timeout=120)
    time.sleep(3 * PROGRESS_INTERVAL)  # several rounds of hostile reads in flight
    jobs.create(
        standin_job(
            "victim",
            venv_bin,
            standin={"steps": 8, "fail": "1:1:1:2"},
            failurePolicy={"backoffSeconds": 1, "maxBackoffSeconds": 2},
        )
    )
    done = jobs.wait_phase("victim", "Succeeded", timeout=240)
    assert (done["attempt"], done["restarts"]) == (2, 1)
    for name in ("trickle", "flood"):
        status = jobs.status(name)
        assert (status["phase"], status["restarts"]) == ("Running", 0), status
        assert condition(status, "ProgressUnknown")["status"] == "True"
    grown = llmjob_operator.rss_bytes() - rss_before
    print(f"\nFIGURES hostile rank 0: operator RSS grew {grown / 2**20:.1f} MiB")
    assert grown < 100 * 2**20, f"operator RSS grew by {grown / 2**20:.0f} MiB"


def test_a_survivor_that_ignores_sigterm_holds_the_restart_only_for_the_short_grace(
    jobs: Jobs, venv_bin: str
) -> None:
    jobs.create(
        standin_job(
            "deaf",
            venv_bin,
            standin={"steps": 60, "fail": "1:1:1:3", "ignore_sigterm": 0},
            checkpoint={"size": "10Mi", "saveTimeoutSeconds": 300},
            failurePolicy={"backoffSeconds": 1, "survivorGracePeriodSeconds": 5},
        )
    )
    failed = jobs.wait("deaf", lambda s: s.get("lastFailure") is not None, timeout=120)
    failed_at = time.time()
    recovered = jobs.wait(
        "deaf",
        lambda s: s.get("attempt") == 2 and s.get("phase") == "Running",
        timeout=120,
    )
    took = time.time() - failed_at
    print(f"\nFIGURES survivor ignoring SIGTERM: attempt 2 Running {took:.1f}s after the failure")
    # backoff 1 s + grace 5 s + pod start; the checkpoint grace would be 330 s.
    assert took < 1 + 5 + 30, took
    assert failed["restarts"] == 1 and recovered["restarts"] == 1


def test_node_loss_with_default_settings_is_a_disruption(
    jobs: Jobs, venv_bin: str, devcluster: Layout, api_client: client.ApiClient
) -> None:
    """As with real ranks: the survivor fails (its collective broke) before the cluster marks
    the lost node's pod. The restart is at once, then given back once the node is NotReady."""
    fail = f"0:1:1:{SURVIVOR_FAILS_AT}"
    jobs.create(standin_job("stranded", venv_bin, standin={"steps": 40, "fail": fail}))
    jobs.wait("stranded", lambda s: (s.get("progress") or {}).get("step", 0) >= 2, timeout=120)
    node = jobs.core.read_namespaced_pod("stranded-worker-1", jobs.namespace).spec.node_name
    marker: Path = devcluster.control_dir / f"lost-{node}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        # The node is lost once its Lease stops being renewed; only then may the survivor
        # fail, or the stranded pod would be deleted by a node that still answers.
        wait_for_lease_expiring(api_client, node)
        assert jobs.status("stranded").get("attempt") == 1, "the survivor failed too early"
        restarted = jobs.wait("stranded", lambda s: s.get("attempt") == 2, timeout=240)
    finally:
        marker.unlink(missing_ok=True)
        wait_for_node_ready(api_client, node)
    assert (restarted["restarts"], restarted["disruptions"]) == (0, 1), restarted
    assert restarted["lastFailure"]["reason"] == "NodeLost", restarted
    assert "RestartReclassified" in {e.reason for e in jobs.events("stranded")}


def wait_for_lease_expiring(api_client: client.ApiClient, node: str) -> None:
    """Until the node's Lease has gone unrenewed for a few seconds (its agent went deaf)."""
    leases = client.CoordinationV1Api(api_client)

    def stale() -> bool:
        renewed = leases.read_namespaced_lease(node, "kube-node-lease").spec.renew_time
        return (datetime.now(UTC) - renewed).total_seconds() > LEASE_STALE_SECONDS

    wait_for(stale, 30, f"{node}'s Lease to stop being renewed")


def wait_for_node_ready(api_client: client.ApiClient, node: str) -> None:
    core = client.CoreV1Api(api_client)

    def ready() -> bool:
        body = core.read_node(node)
        conditions = {c.type: c.status for c in body.status.conditions or []}
        return conditions.get("Ready") == "True" and not body.spec.taints

    wait_for(ready, 90, f"{node} Ready and untainted again")


def test_a_pod_deleted_during_a_watch_gap_leaves_no_ghost(
    jobs: Jobs, venv_bin: str, devcluster: Layout, llmjob_operator: OperatorProcess
) -> None:
    """The operator is frozen (it cannot see), a worker pod is deleted, and every watch's
    resourceVersion expires (kube-apiserver restarts, etcd compacted): kopf's resumed watches
    get 410 Gone and relist, which never reports the deleted pod. The operator's own relist
    must drop it, or the gang would wait for a pod that is not there."""
    jobs.create(standin_job("ghost", venv_bin, standin={"steps": 30}))
    jobs.wait_phase("ghost", "Running", timeout=120)
    assert llmjob_operator.process is not None
    llmjob_operator.process.send_signal(signal.SIGSTOP)
    try:
        jobs.core.delete_namespaced_pod("ghost-worker-1", jobs.namespace, grace_period_seconds=0)
        wait_for(
            lambda: "ghost-worker-1" not in {p.metadata.name for p in jobs.pods("ghost")},
            30,
            "ghost-worker-1 gone",
        )
        cluster.expire_watches(devcluster)
    finally:
        llmjob_operator.process.send_signal(signal.SIGCONT)
    restarted = jobs.wait("ghost", lambda s: s.get("attempt") == 2, timeout=120)
    assert restarted["lastFailure"]["reason"] == "PodDeleted"
    assert (restarted["restarts"], restarted["disruptions"]) == (0, 1)
    done = jobs.wait_phase("ghost", "Succeeded", timeout=240)
    assert done["attempt"] == 2
