"""Two operator replicas on one Lease (issue 10, high availability), against the real API
server: one leads, the other stands by with a warm cache; a killed leader's gang failure is
handled by the standby; a SIGTERM hands over at once; the election's own API cost."""

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from llmjob_devcluster import audit
from llmjob_devcluster.layout import Layout
from tests import apiserver_requests
from tests.conftest import wait_for
from tests.integration.jobs import GangWatch, Jobs, standin_job
from tests.integration.operator_process import LEASE_NAMESPACE, OperatorProcess

pytestmark = pytest.mark.integration

LEASE = "llmjob-operator-ha"
# client-go's defaults, the chart's and the operator's.
LEASE_DURATION = 15.0
RETRY_PERIOD = 2.0
BUDGET_WINDOW_SECONDS = 10.0


@pytest.fixture(scope="module")
def replicas(
    kubeconfig: Path, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[OperatorProcess]]:
    logs = tmp_path_factory.mktemp("operators")
    pair = [
        OperatorProcess(kubeconfig, logs / f"operator-{n}.log", lease_name=LEASE) for n in (0, 1)
    ]
    for operator in pair:
        operator.start(wait=False)
    for operator in pair:
        operator.wait_healthy()
    yield pair
    for operator in pair:
        operator.stop()
    for operator in pair:
        print(f"\n{operator.log_path}:\n{operator.tail(80)}")


@pytest.fixture
def jobs(api_client: client.ApiClient, namespace: str, replicas: list[OperatorProcess]) -> Jobs:
    return Jobs(api_client, namespace)


def is_leader(operator: OperatorProcess) -> bool | None:
    """What its llmjob_operator_leader gauge says; None when it serves no metrics."""
    try:
        text = operator.metrics()
    except OSError:
        return None
    (value,) = re.findall(r"^llmjob_operator_leader (\S+)$", text, re.MULTILINE)
    return float(value) == 1.0


def leader_of(replicas: list[OperatorProcess], timeout: float = 40) -> OperatorProcess:
    """The one replica whose gauge says 1, once exactly one does (the other says 0)."""
    found: list[OperatorProcess] = []

    def one_leads() -> bool:
        states = [is_leader(o) for o in replicas if o.process and o.process.poll() is None]
        found[:] = [o for o in replicas if is_leader(o)]
        return states.count(True) == 1 and states.count(False) == len(states) - 1

    wait_for(one_leads, timeout, "exactly one leader")
    return found[0]


def lease_holder(api_client: client.ApiClient) -> str:
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease(LEASE, LEASE_NAMESPACE)
    return str(lease.spec.holder_identity or "") if lease.spec else ""


def identity_in_log(operator: OperatorProcess) -> str:
    """The identity it last led under: a restarted replica appends to the same log, with a new
    identity (the election's suffix is per process)."""
    return re.findall(r"leader election: (\S+) leads", operator.log_path.read_text())[-1]


def attempts_started(jobs: Jobs, name: str) -> Counter[int]:
    """AttemptStarted events per attempt number: a second leader acting would post one twice."""
    return Counter(
        int(found.group(1))
        for e in jobs.events(name)
        if e.reason == "AttemptStarted" and (found := re.search(r"attempt (\d+)", e.message or ""))
    )


def test_one_replica_leads_and_the_election_costs_one_request_per_retry_period_each(
    replicas: list[OperatorProcess], api_client: client.ApiClient
) -> None:
    leader = leader_of(replicas)
    standby = next(o for o in replicas if o is not leader)
    assert lease_holder(api_client) == identity_in_log(leader)
    assert "leads" not in standby.log_path.read_text()

    # The counters are read somewhere inside each (large) /metrics request: the budget is held
    # over the window from before the first read to after the second, the floor over the inner.
    outer_start = time.monotonic()
    before = apiserver_requests.snapshot(api_client)
    inner_start = time.monotonic()
    time.sleep(BUDGET_WINDOW_SECONDS)
    inner = time.monotonic() - inner_start
    delta = apiserver_requests.since(api_client, before)
    window = time.monotonic() - outer_start
    # The node agents renew their nodes' Leases with PATCH; GET and PUT of leases are ours:
    # the leader's renew (one PUT, client-go's fast path) and the standby's poll (one GET).
    renews = apiserver_requests.count(delta, verbs={"PUT"}, resource="leases")
    polls = apiserver_requests.count(delta, verbs={"GET"}, resource="leases")
    budget = window / RETRY_PERIOD + 1
    print(f"FIGURES election cost over {window:.1f} s: {renews} renews, {polls} standby polls")
    assert renews <= budget
    assert polls <= budget
    # And it is really running (every 2 s, a standby every 2 to 2.4 s; half that rate at least,
    # on a loaded machine).
    assert renews >= inner / RETRY_PERIOD / 2
    assert polls >= inner / (RETRY_PERIOD * 1.2) / 2
    assert is_leader(leader) and is_leader(standby) is False


def test_the_standby_takes_over_a_killed_leader_and_restarts_the_failed_gang(
    replicas: list[OperatorProcess], jobs: Jobs, venv_bin: str, api_client: client.ApiClient
) -> None:
    leader = leader_of(replicas)
    standby = next(o for o in replicas if o is not leader)
    gang = GangWatch(api_client, jobs.namespace, "orphan")
    try:
        # Worker 1 of attempt 1 fails after its 3rd step: while no replica leads.
        jobs.create(standin_job("orphan", venv_bin, standin={"steps": 6, "fail": "1:1:1:3"}))
        jobs.wait_phase("orphan", "Running", timeout=120)
        leader.kill()
        killed = time.monotonic()
        wait_for(lambda: is_leader(standby), LEASE_DURATION + 10, "the standby to lead")
        took_over = time.monotonic() - killed
        restarted = jobs.wait("orphan", lambda s: s.get("attempt") == 2, 60, "attempt 2")
        restart_after_kill = time.monotonic() - killed
        done = jobs.wait_phase("orphan", "Succeeded", timeout=120)
    finally:
        gang.stop()
    print(
        f"FIGURES leader killed -> standby leads {took_over:.1f} s "
        f"(lease duration {LEASE_DURATION:.0f} s); -> attempt 2 recorded {restart_after_kill:.1f} s"
    )
    assert took_over <= LEASE_DURATION + 2 * RETRY_PERIOD + 1
    assert restarted["lastFailure"]["worker"] == 1
    assert done["restarts"] == 1
    assert attempts_started(jobs, "orphan") == {1: 1, 2: 1}
    assert gang.attempts_seen == {"1", "2"}
    assert gang.overlaps == [], "two attempts' pods were alive at once"
    # The killed replica comes back as a new standby (a new identity: it never reuses one).
    leader.start()
    assert leader_of(replicas) is standby
    assert lease_holder(api_client) == identity_in_log(standby)


def test_a_sigterm_hands_the_lease_over_at_once(
    replicas: list[OperatorProcess], jobs: Jobs, venv_bin: str, api_client: client.ApiClient
) -> None:
    leader = leader_of(replicas)
    standby = next(o for o in replicas if o is not leader)
    jobs.create(standin_job("handed", venv_bin, standin={"steps": 6}))
    jobs.wait_phase("handed", "Running", timeout=120)
    leader.terminate()
    signalled = time.monotonic()
    wait_for(lambda: is_leader(standby), 2 * RETRY_PERIOD + 3, "the standby to lead")
    handed_over = time.monotonic() - signalled
    assert leader.process is not None
    assert leader.process.wait(timeout=20) == 0
    print(f"FIGURES SIGTERM of the leader -> standby leads {handed_over:.1f} s")
    assert "released lease" in leader.log_path.read_text()
    done = jobs.wait_phase("handed", "Succeeded", timeout=120)
    assert done["restarts"] == 0
    assert attempts_started(jobs, "handed") == {1: 1}
    leader.start()
    assert leader_of(replicas) is standby


def writes_by(identity: str, start: audit.Mark) -> list[audit.Write]:
    """What the API server answered since `start` for one replica (its User-Agent names it)."""
    return [w for w in audit.writes_since(start) if f"({identity})" in w.user_agent]


def test_a_frozen_leader_that_wakes_after_the_take_over_sends_nothing(
    replicas: list[OperatorProcess],
    jobs: Jobs,
    venv_bin: str,
    api_client: client.ApiClient,
    devcluster: Layout,
) -> None:
    """SIGSTOP (a long pause, a hung node): the process lives on, its clock with it. Its term
    ended at its renew deadline; when it wakes, with a backlog of watch events, its workers
    and its fenced client send nothing, while the new leader restarts the gang.

    Held by the API server's audit log, not the replica's own request counter: that counts a
    request when its response is handled, so a write sent before the pause and answered
    after it would read as sent after."""
    leader = leader_of(replicas)
    standby = next(o for o in replicas if o is not leader)
    identity = identity_in_log(leader)
    start = audit.mark(devcluster)
    gang = GangWatch(api_client, jobs.namespace, "frozen")
    try:
        jobs.create(standin_job("frozen", venv_bin, standin={"steps": 6, "fail": "1:1:1:2"}))
        jobs.wait_phase("frozen", "Running", timeout=120)
        leader.pause()
        try:
            wait_for(lambda: is_leader(standby), LEASE_DURATION + 10, "the standby to lead")
            # The frozen replica has sent nothing since it was stopped, well before this: any
            # of its writes the server receives from here on is a second leader acting.
            took_over = time.time()
            jobs.wait("frozen", lambda s: s.get("attempt") == 2, 60, "attempt 2")
        finally:
            leader.resume()
        wait_for(lambda: is_leader(leader) is False, 10, "the woken replica to stand by")
        time.sleep(RETRY_PERIOD)
        assert "stopped leading: its renew deadline passed" in leader.log_path.read_text()
        assert is_leader(standby)
        jobs.wait_phase("frozen", "Succeeded", timeout=120)
        by_old_leader = writes_by(identity, start)
    finally:
        gang.stop()
    # It did act while it led (attempt 1's pods are its creates), and nothing after.
    assert any(w.verb == "create" and w.resource == "pods" for w in by_old_leader)
    assert [w for w in by_old_leader if w.received >= took_over] == []
    assert attempts_started(jobs, "frozen") == {1: 1, 2: 1}
    assert gang.overlaps == [], "two attempts' pods were alive at once"
