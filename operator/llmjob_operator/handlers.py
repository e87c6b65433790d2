"""kopf registrations only: watch events feed the cache and wake the job's reconcile.

Only low-level `on.event` handlers: kopf's daemons and timers would put a finalizer on
every job (blocking its deletion while the operator is down), and its change handlers
would write their own annotations. Time-based rules are served by the work queue's
delayed re-adds instead.

Every replica watches and caches; only the elected leader's reconcile workers take keys from
the work queue (leader.py), and each of their writes is fenced by the term it started in.

Owned kinds are watched with a server-side label selector (only our objects are sent and
decoded), and an event wakes a job only when it changed the cache: the MODIFIED event of our
own status write carries the version we already hold, so it costs no second pass.

What kopf does per event is kept to the watch itself: the handlers are coroutines (a sync
handler costs a hop to kopf's thread pool per event, and only touches in-memory structures
anyway), and no object's "essence" is built (see NoEssence).
"""

import logging
import socket
import threading
import uuid
from collections.abc import Iterable
from functools import partial
from typing import Any, cast

import kopf

from llmjob_operator import metrics
from llmjob_operator.api import GROUP, PLURAL, VERSION
from llmjob_operator.controller import Controller
from llmjob_operator.expectations import CreateExpectations
from llmjob_operator.kube import ClientLimits, Kube, TokenBucket, load_config
from llmjob_operator.leader import ElectionSettings, LeaderElector, NotLeaderError
from llmjob_operator.metrics import serve
from llmjob_operator.progress import ProgressReader
from llmjob_operator.render import JOB_NAME_LABEL
from llmjob_operator.settings import OperatorSettings
from llmjob_operator.store import Body, JobKey, Store
from llmjob_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

store = Store()
expected = CreateExpectations()
queue: WorkQueue[JobKey] = WorkQueue(observe_latency=metrics.QUEUE_LATENCY_SECONDS.observe)
_settings: OperatorSettings | None = None
_progress: ProgressReader | None = None
_election: LeaderElector | None = None
_workers: list[threading.Thread] = []
# How long a worker blocks on the queue or the election before it looks again.
WORKER_POLL_SECONDS = 1.0
# SIGTERM: in-flight reconciles get this long to finish before the lease is released (their
# writes stop at the renew deadline anyway).
SHUTDOWN_GRACE_SECONDS = 30.0
# kopf replays a listing as events of type None: at start-up, and after a 410 Gone. It never
# reports what vanished in the gap, so seeing one triggers our own relist at once.
_relisted = threading.Event()
RELIST_SETTLE_SECONDS = 1.0
# Seconds between kopf's watch reconnects: a silent stall of a long watch is kopf's top pitfall.
WATCH_SERVER_TIMEOUT = 300
WATCH_CLIENT_TIMEOUT = 330
OWNED_KINDS = {
    "Pod": "pods",
    "Service": "services",
    "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims",
}


class NoEssence(kopf.DiffBaseStorage):
    """kopf deep-copies every object on every event to diff it against the last handled
    "essence" (its stored diff base). Only change handlers (on.create/update/field) and
    daemons use that diff, and this operator registers neither: every essence is empty, and
    nothing is copied, stored or compared. In a 100-job bench round the copies were a quarter
    of the operator's CPU."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure(settings: OperatorSettings) -> None:
    """Called by main() before kopf starts."""
    global _settings  # noqa: PLW0603 - kopf handlers are module-level by design
    _settings = settings


def _limits(settings: OperatorSettings, identity: str) -> ClientLimits:
    return ClientLimits(
        request_timeout_seconds=settings.api_timeout_seconds,
        writes=TokenBucket(settings.api_write_qps, settings.api_write_burst),
        user_agent=f"llmjob-operator ({identity})",
    )


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _progress  # noqa: PLW0603 - kopf handlers are module-level by design
    assert _settings is not None, "configure() must run before kopf starts"
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.watching.connect_timeout = 30
    # kopf would post its own Events (handler errors) from every replica, outside the
    # leader's fence: the operator's events are its own (kube.py), sent only by the leader.
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = NoEssence()
    for plural in OWNED_KINDS.values():
        settings.watching.label_selectors["v1", plural] = JOB_NAME_LABEL
    if _settings.namespaces:
        # Exact namespace names need none of kopf's cluster-wide scans (namespaces, to match
        # glob patterns; CRDs, to notice new resources): namespaced RBAC grants neither.
        settings.scanning.disabled = True
    load_config()
    # client-go's convention: the pod's name, and a suffix that no restart reuses.
    identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    limits = _limits(_settings, identity)
    # The first relist fills the cache before any worker plans from it.
    resync(Kube(limits), _settings)
    serve(_settings.metrics_port, store.jobs, queue)
    _progress = ProgressReader(
        wake=queue.add,
        interval_seconds=_settings.progress_interval_seconds,
        concurrency=_settings.progress_concurrency,
        deadline_seconds=_settings.progress_deadline_seconds,
        max_bytes=_settings.progress_max_bytes,
    )
    threading.Thread(target=_progress.run, name="progress", daemon=True).start()
    threading.Thread(
        target=_resync_forever, args=(limits, _settings), name="resync", daemon=True
    ).start()
    controller = Controller(store, _settings, socket.gethostname(), _progress, expected)
    _start_election(Kube(limits), _settings, identity)
    for number in range(_settings.workers):
        worker = threading.Thread(
            target=_work, args=(controller, limits), name=f"reconcile-{number}", daemon=True
        )
        worker.start()
        _workers.append(worker)
    log.info("llmjob operator started: %s", _settings)


def _start_election(kube: Kube, settings: OperatorSettings, identity: str) -> None:
    global _election  # noqa: PLW0603 - kopf handlers are module-level by design
    metrics.LEADER.set(0)
    _election = LeaderElector(
        kube,
        ElectionSettings(
            identity=identity,
            lease_name=settings.lease_name,
            lease_namespace=settings.lease_namespace,
            lease_duration_seconds=settings.lease_duration_seconds,
            renew_deadline_seconds=settings.renew_deadline_seconds,
            retry_period_seconds=settings.retry_period_seconds,
        ),
        on_started_leading=_started_leading,
        on_stopped_leading=_stopped_leading,
    )
    threading.Thread(target=_election.run, name="leader-election", daemon=True).start()


def _started_leading() -> None:
    metrics.LEADER.set(1)
    # The cache is warm: every job is reconciled at once, not when its next event comes.
    for key in store.job_keys():
        queue.add(key)


def _stopped_leading() -> None:
    metrics.LEADER.set(0)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    """SIGTERM: no new work, in-flight reconciles finish, then the lease is released so that
    a standby takes over at its next retry."""
    queue.close()
    for worker in _workers:
        worker.join(SHUTDOWN_GRACE_SECONDS)
    if _election is not None:
        _election.stop()
    if _progress is not None:
        _progress.stop()


def resync(kube: Kube, settings: OperatorSettings) -> None:
    """A relist of every kind we cache (label-selected): what a watch gap deleted is dropped,
    what it changed is updated, and each job so touched is reconciled."""
    namespaces: list[str | None] = list(settings.namespaces) or [None]
    touched: set[JobKey] = set()
    for namespace in namespaces:
        jobs, version = kube.list_kind("LLMTrainingJob", namespace)
        touched |= store.replace_jobs(jobs, version, namespace)
        for kind in OWNED_KINDS:
            items, version = kube.list_kind(kind, namespace)
            touched |= store.replace(kind, items, version, namespace)
    for key in touched:
        _wake_or_forget(key)


def _resync_forever(limits: ClientLimits, settings: OperatorSettings) -> None:
    """Relists every resync interval, and soon after kopf relists a watch (a watch gap)."""
    kube = Kube(limits)
    while not queue.closed.is_set():
        if _relisted.wait(settings.resync_seconds):
            # Let kopf's whole replay arrive first, so it is not mistaken for a change.
            queue.closed.wait(RELIST_SETTLE_SECONDS)
            _relisted.clear()
        try:
            resync(kube, settings)
        except Exception:
            log.exception("resync failed; the next one retries")


def _wake_or_forget(key: JobKey) -> None:
    if store.job(key) is not None:
        queue.add(key)
    else:
        queue.drop(key)
        if _progress is not None:
            _progress.watch(key, None)


def _work(controller: Controller, limits: ClientLimits) -> None:
    """A reconcile worker: idle while this replica is a standby; while it leads, takes keys
    with every write fenced by the current term (a reconcile planned in an older term never
    writes in a newer one)."""
    assert _election is not None
    unfenced = Kube(limits)
    while not queue.closed.is_set():
        term = _election.wait_for_term(WORKER_POLL_SECONDS)
        if term is None:
            continue
        kube = unfenced.fenced(partial(_election.write_window, term))
        while _election.is_current(term):
            key = queue.get(timeout=WORKER_POLL_SECONDS)
            if key is None:
                if queue.closed.is_set():
                    return
                continue
            if not _election.is_current(term):
                # Taken as the term ended: left queued for the next leader term.
                queue.done(key)
                queue.add(key)
                break
            _process(controller, kube, key)


def _process(controller: Controller, kube: Kube, key: JobKey) -> None:
    try:
        outcome = controller.reconcile(kube, key)
    except NotLeaderError:
        log.info("reconcile of %s/%s stopped: the lease was lost", *key)
        return
    except Exception:
        log.exception("reconcile of %s/%s crashed", *key)
        queue.add_rate_limited(key)
        return
    finally:
        queue.done(key)
    if outcome.failed:
        queue.add_rate_limited(key)
        return
    queue.forget(key)
    if outcome.requeue_after is not None:
        queue.add_after(key, outcome.requeue_after)


def _plain(body: kopf.RawBody) -> Body:
    """kopf's typed body as the plain dict the rest of the operator works with."""
    return cast(Body, body)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(event: kopf.RawEvent, **_: Any) -> None:
    body = _plain(event["object"])
    meta = body["metadata"]
    key: JobKey = (meta["namespace"], meta["name"])
    if event.get("type") is None:
        _relisted.set()
    if event.get("type") == "DELETED":
        store.drop_job(key, meta.get("uid"))
        _wake_or_forget(key)
        return
    changed = store.put_job(body)[1]
    if changed:
        queue.add(key)


def _owned_event(kind: str, event: kopf.RawEvent) -> None:
    body = _plain(event["object"])
    if event.get("type") is None:
        _relisted.set()
    if event.get("type") == "DELETED":
        changed = store.drop_owned(kind, body)
    else:
        changed = store.put_owned(kind, body)
    if not changed:
        return
    owner = store.owner_of(body)
    if owner is not None:
        queue.add(owner)
    # A same-named job may be waiting for this object of an older owner to go away.
    job_label = (body["metadata"].get("labels") or {}).get(JOB_NAME_LABEL, "")
    named = (body["metadata"]["namespace"], job_label)
    if named != owner and store.job(named) is not None:
        queue.add(named)


@kopf.on.event("v1", "pods", labels={JOB_NAME_LABEL: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, **_: Any) -> None:
    meta = event["object"]["metadata"]
    expected.observed((meta["namespace"], meta["labels"][JOB_NAME_LABEL]), meta["name"])
    _owned_event("Pod", event)


@kopf.on.event("v1", "services", labels={JOB_NAME_LABEL: kopf.PRESENT})
async def service_event(event: kopf.RawEvent, **_: Any) -> None:
    _owned_event("Service", event)


@kopf.on.event("v1", "configmaps", labels={JOB_NAME_LABEL: kopf.PRESENT})
async def config_map_event(event: kopf.RawEvent, **_: Any) -> None:
    _owned_event("ConfigMap", event)


@kopf.on.event("v1", "persistentvolumeclaims", labels={JOB_NAME_LABEL: kopf.PRESENT})
async def claim_event(event: kopf.RawEvent, **_: Any) -> None:
    _owned_event("PersistentVolumeClaim", event)
