"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics.

Only the leader's reconcile workers act; a standby keeps its watches and cache warm.

- A standby never trusts the clocks of others: a lease held by another is taken only once its
  record stayed unchanged for leaseDurationSeconds on the standby's own monotonic clock (the
  observed-time rule); a released lease (empty holder) is taken at once.
- The leader renews every retry period. It stops acting once renewDeadline has passed since the
  send time of its last successful renew (the term ends), which is before any standby can see
  the lease expire (leaseDuration after it saw that renew, which was later). Every write of a
  reconcile is fenced by the term it started under (`write_window`), and its time-out is cut
  to the time left until leaseDuration: no write is started after the deadline, none outlives
  the lease. The check and the send are two steps, as in client-go: a process stopped between
  them (under a millisecond of the client's request building) sends that one write when it
  wakes. The server refuses it where the new leader has acted on the object since: status
  patches carry the resourceVersion they were planned from, pod deletes the pod's UID, and pods
  have fixed names.
- A renew first updates the lease with the version it last wrote (client-go's fast path: one
  request per retry period); on any failure it reads the lease and tries once more.
- Stopping releases the lease (empty holder, a one-second duration), so a standby takes it at
  its next retry instead of after leaseDuration.

The decisions are pure functions of records and clock readings; `LeaderElector` does the I/O,
through kube.py's counted, timed-out lease calls.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from llmjob_operator.kube import Kube

log = logging.getLogger(__name__)

# client-go's JitterFactor: a standby retries after retryPeriod * (1 + up to 0.2).
JITTER_FACTOR = 1.2


class NotLeaderError(Exception):
    """A write was asked outside the term it was planned in: the lease is no longer ours."""


@dataclass(frozen=True)
class ElectionSettings:
    identity: str
    lease_name: str
    lease_namespace: str
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0

    def __post_init__(self) -> None:
        # client-go's own checks (NewLeaderElector).
        if self.lease_duration_seconds <= self.renew_deadline_seconds:
            raise ValueError("the lease duration must be longer than the renew deadline")
        if self.renew_deadline_seconds <= JITTER_FACTOR * self.retry_period_seconds:
            raise ValueError("the renew deadline must exceed 1.2 times the retry period")
        if self.retry_period_seconds <= 0:
            raise ValueError("the retry period must be positive")


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec, as stored (times are the wire's RFC 3339 strings)."""

    holder: str
    lease_duration_seconds: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "LeaseRecord":
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


@dataclass(frozen=True)
class Observation:
    """A lease record and when this replica first saw it (its own monotonic clock)."""

    record: LeaseRecord
    observed_at: float


@dataclass(frozen=True)
class Term:
    """One continuous leadership: its number, and the send time of its last successful renew."""

    number: int
    renewed_at: float


def observe(previous: Observation | None, current: LeaseRecord, now: float) -> Observation:
    """The observed-time rule: the clock starts when the record changes, never from its times."""
    if previous is not None and previous.record == current:
        return previous
    return Observation(current, now)


def held_by_another(observation: Observation, identity: str, now: float) -> bool:
    record = observation.record
    return (
        record.holder not in ("", identity)
        and now < observation.observed_at + record.lease_duration_seconds
    )


def claim(current: LeaseRecord | None, settings: ElectionSettings, wall: str) -> LeaseRecord:
    """The record that acquires the lease, or renews it when we hold it already."""
    if current is not None and current.holder == settings.identity:
        return replace(
            current,
            lease_duration_seconds=int(settings.lease_duration_seconds),
            renew_time=wall,
        )
    return LeaseRecord(
        holder=settings.identity,
        lease_duration_seconds=int(settings.lease_duration_seconds),
        acquire_time=wall,
        renew_time=wall,
        transitions=0 if current is None else current.transitions + 1,
    )


def released(current: LeaseRecord, wall: str) -> LeaseRecord:
    """client-go's release: no holder, and a one-second duration for any replica that
    still honours it."""
    return LeaseRecord("", 1, wall, wall, current.transitions)


def term_holds(term: Term, settings: ElectionSettings, now: float) -> bool:
    return now < term.renewed_at + settings.renew_deadline_seconds


def write_window(term: Term, settings: ElectionSettings, now: float) -> float:
    """Seconds a write sent now may take: until a standby could see the lease expire.
    Raises NotLeaderError once the term has passed its renew deadline."""
    if not term_holds(term, settings, now):
        raise NotLeaderError(f"term {term.number} passed its renew deadline")
    return term.renewed_at + settings.lease_duration_seconds - now


def wall_now() -> str:
    """metav1.MicroTime as the API server stores it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_API_ERRORS = (ApiException, OSError, urllib3.exceptions.HTTPError)


class LeaderElector:
    """Runs the election (`run`, in its own thread) and fences writes by term."""

    def __init__(
        self,
        kube: Kube,
        settings: ElectionSettings,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = wall_now,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._clock = clock
        self._wall = wall
        self._cond = threading.Condition()
        self._term: Term | None = None
        self._terms = 0
        self._observation: Observation | None = None
        self._version: str | None = None
        """resourceVersion of the record we last wrote (the fast path's precondition)."""
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._stopped = threading.Event()

    # -- what the workers ask ------------------------------------------------------------

    def wait_for_term(self, timeout: float) -> int | None:
        """The current term's number once leading; None when not leading within `timeout`."""
        with self._cond:
            self._cond.wait_for(self._leading, timeout)
            term = self._term
            return term.number if term is not None and self._leading() else None

    def is_current(self, number: int) -> bool:
        with self._cond:
            return (
                self._term is not None
                and self._term.number == number
                and term_holds(self._term, self.settings, self._clock())
            )

    def write_window(self, number: int) -> float:
        """The fence of kube.py's writes: seconds the write may take, or NotLeaderError."""
        with self._cond:
            if self._term is None or self._term.number != number:
                raise NotLeaderError(f"term {number} is over")
            return write_window(self._term, self.settings, self._clock())

    def _leading(self) -> bool:
        return self._term is not None and term_holds(self._term, self.settings, self._clock())

    # -- the election loop ---------------------------------------------------------------

    def run(self) -> None:
        self._running.set()
        try:
            while not self._stopping.is_set():
                self.try_once()
                period = self.settings.retry_period_seconds
                with self._cond:
                    leading = self._term is not None
                if not leading:
                    period *= 1 + random.random() * (JITTER_FACTOR - 1)
                self._stopping.wait(period)
        finally:
            self._stopped.set()

    def try_once(self) -> bool:
        """One acquire-or-renew; returns whether we lead afterwards."""
        started = self._clock()
        with self._cond:
            term = self._term
        timeout = self.kube.limits.request_timeout_seconds
        if term is not None:
            # A renew that returns after the deadline is of no use: the term is over by then.
            timeout = min(timeout, term.renewed_at + self.settings.renew_deadline_seconds - started)
        ok = False
        if timeout > 0:
            try:
                ok = self._acquire_or_renew(term, timeout)
            except _API_ERRORS as error:
                log.warning("leader election: lease %s failed: %s", self._lease_ref(), error)
            except Exception:
                # A bug of ours must not end the election thread: the term still ends on time.
                log.exception("leader election: a try on lease %s crashed", self._lease_ref())
        if ok:
            self._renewed(started)
        elif term is not None and not term_holds(term, self.settings, self._clock()):
            self._end_term("its renew deadline passed")
        return ok

    def _acquire_or_renew(self, term: Term | None, timeout: float) -> bool:
        namespace, name = self.settings.lease_namespace, self.settings.lease_name
        if term is not None and self._observation is not None and self._version is not None:
            record = claim(self._observation.record, self.settings, self._wall())
            version = self.kube.update_lease(
                namespace, name, self._version, record.to_spec(), timeout
            )
            if version is not None:
                self._wrote(record, version)
                return True
        found = self.kube.get_lease(namespace, name, timeout)
        if found is None:
            record = claim(None, self.settings, self._wall())
            version = self.kube.create_lease(namespace, name, record.to_spec(), timeout)
            if version is None:
                return False
            self._wrote(record, version)
            return True
        spec, version = found
        self._observation = observe(self._observation, LeaseRecord.from_spec(spec), self._clock())
        if held_by_another(self._observation, self.settings.identity, self._clock()):
            if term is not None:
                self._end_term(f"{self._observation.record.holder} holds it")
            return False
        record = claim(self._observation.record, self.settings, self._wall())
        written = self.kube.update_lease(namespace, name, version, record.to_spec(), timeout)
        if written is None:
            return False
        self._wrote(record, written)
        return True

    def _wrote(self, record: LeaseRecord, version: str) -> None:
        self._observation = Observation(record, self._clock())
        self._version = version

    def _renewed(self, started: float) -> None:
        with self._cond:
            if self._term is not None:
                self._term = Term(self._term.number, started)
                return
            self._terms += 1
            self._term = Term(self._terms, started)
            self._cond.notify_all()
        log.info("leader election: %s leads (lease %s)", self.settings.identity, self._lease_ref())
        self._on_started()

    def _end_term(self, why: str) -> None:
        with self._cond:
            if self._term is None:
                return
            self._term = None
        log.warning("leader election: %s stopped leading: %s", self.settings.identity, why)
        self._on_stopped()

    def stop(self) -> None:
        """Ends the loop; a leader releases the lease (call once no write can be in flight)."""
        self._stopping.set()
        if self._running.is_set():
            self._stopped.wait(self.settings.renew_deadline_seconds + 5)
        with self._cond:
            term = self._term
        if term is None or self._observation is None or self._version is None:
            return
        self._end_term("shutting down")
        record = released(self._observation.record, self._wall())
        try:
            written = self.kube.update_lease(
                self.settings.lease_namespace,
                self.settings.lease_name,
                self._version,
                record.to_spec(),
                self.kube.limits.request_timeout_seconds,
            )
        except _API_ERRORS as error:
            log.warning("leader election: could not release lease %s: %s", self._lease_ref(), error)
            return
        if written is not None:
            log.info("leader election: released lease %s", self._lease_ref())

    def _lease_ref(self) -> str:
        return f"{self.settings.lease_namespace}/{self.settings.lease_name}"
