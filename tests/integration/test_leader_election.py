"""The leader elector's I/O against the real API server, each replica on its own injected
clock and driven one try at a time: no sleeping, every rule at its edge (well under a second)."""

import uuid

import pytest
from kubernetes import client

from llmjob_operator.kube import ClientLimits, Kube
from llmjob_operator.leader import ElectionSettings, LeaderElector, NotLeaderError
from tests.integration.operator_process import LEASE_NAMESPACE

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Replica:
    def __init__(self, api_client: client.ApiClient, lease: str, name: str) -> None:
        self.clock = Clock()
        self.started = 0
        self.stopped = 0
        self.elector = LeaderElector(
            Kube(ClientLimits(), api_client),
            ElectionSettings(identity=name, lease_name=lease, lease_namespace=LEASE_NAMESPACE),
            on_started_leading=self._on_started,
            on_stopped_leading=self._on_stopped,
            clock=self.clock,
        )

    def _on_started(self) -> None:
        self.started += 1

    def _on_stopped(self) -> None:
        self.stopped += 1


def holder(api_client: client.ApiClient, lease: str) -> tuple[str, int]:
    spec = client.CoordinationV1Api(api_client).read_namespaced_lease(lease, LEASE_NAMESPACE).spec
    return spec.holder_identity or "", spec.lease_transitions or 0


def test_a_silent_leader_is_fenced_before_the_standby_takes_over_and_a_release_is_taken_at_once(
    api_client: client.ApiClient,
) -> None:
    lease = f"election-{uuid.uuid4().hex[:6]}"
    a, b = Replica(api_client, lease, "a_1"), Replica(api_client, lease, "b_2")
    assert a.elector.try_once()  # no Lease yet: created with a as holder
    term = a.elector.wait_for_term(0)
    assert term == 1 and a.started == 1
    assert holder(api_client, lease) == ("a_1", 0)
    assert not b.elector.try_once()
    assert b.elector.wait_for_term(0) is None

    # a renews (fast path) twice; then goes silent, as a frozen process does.
    for _ in range(2):
        a.clock.now += 2
        assert a.elector.try_once()
    assert a.elector.write_window(term) == 15.0
    # b keeps polling: the record it saw changed, so its clock restarted at each renew.
    b.clock.now += 2
    assert not b.elector.try_once()
    # a's writes stop at its renew deadline, 10 s after its last renew was sent ...
    a.clock.now += 9.9
    assert a.elector.is_current(term)
    assert a.elector.write_window(term) == pytest.approx(5.1)
    a.clock.now += 0.1
    assert not a.elector.is_current(term)
    with pytest.raises(NotLeaderError):
        a.elector.write_window(term)
    # ... while b waits the whole lease duration on its own clock since it saw that renew.
    b.clock.now += 14.9
    assert not b.elector.try_once()
    b.clock.now += 0.1
    assert b.elector.try_once()
    assert holder(api_client, lease) == ("b_2", 1)
    # a wakes up past its deadline: the term ends without a request; then it reads b's record.
    assert not a.elector.try_once()
    assert a.stopped == 1 and a.elector.wait_for_term(0) is None
    assert not a.elector.try_once()
    assert holder(api_client, lease) == ("b_2", 1)

    # b stops (SIGTERM): the released lease is a's at its next try, not 15 s later.
    b.elector.stop()
    assert b.stopped == 1
    assert holder(api_client, lease) == ("", 1)
    assert a.elector.try_once()
    assert a.elector.wait_for_term(0) == 2
    assert holder(api_client, lease) == ("a_1", 2)
