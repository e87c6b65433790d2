"""One reconcile of one job: observe (cache + progress reads) -> render -> plan -> execute.

The only place that joins the pure planner to I/O. Writes the status first, then acts,
so the status stays the durable record (see reconcile.py). Writes only what a user can
see changing (reconcile.status_write_due), so an idle job costs the API server nothing.
"""

import functools
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from llmjob_operator import metrics
from llmjob_operator.api import LLMTrainingJobStatus, explain_validation_error, validate_job
from llmjob_operator.expectations import CreateExpectations
from llmjob_operator.kube import ConflictError, ForeignObjectError, GoneError, Kube
from llmjob_operator.leader import NotLeaderError
from llmjob_operator.observe import (
    NodeHealth,
    Observed,
    QueueVerdict,
    WorkerState,
    kueue_verdict,
    parse_time,
    worker_state,
)
from llmjob_operator.policy import set_condition
from llmjob_operator.progress import ProgressReader, Target
from llmjob_operator.reconcile import (
    Action,
    ApplyObject,
    DeleteJob,
    DeletePod,
    Event,
    JobView,
    Plan,
    plan,
    plan_invalid,
    status_write_due,
)
from llmjob_operator.render import (
    KUEUE_QUEUE_LABEL,
    SPEC_HASH_ANNOTATION,
    JobRef,
    RenderSettings,
    claim_name,
    pod_group_name,
    render,
)
from llmjob_operator.settings import OperatorSettings
from llmjob_operator.store import JobKey, Store

log = logging.getLogger(__name__)
RECONCILE_ERROR_CONDITION = "ReconcileError"
# Node reads are shared by every job on the node for this long.
NODE_HEALTH_TTL_SECONDS = 5.0
# A Queued gang's Workload is read at most this often (reconcile.QUEUE_READ_SECONDS wakes it).
QUEUE_VERDICT_TTL_SECONDS = 25.0
# Threads that create one plan's pods at once, shared by every reconcile worker.
POD_CREATE_THREADS = 16


def slow_start(pool: Executor, calls: Sequence[Callable[[], None]]) -> None:
    """Runs `calls` 1, then 2, 4, 8 ... at a time (client-go's slowStartBatch, as its Job
    controller creates pods): a gang of 8 takes 4 round trips, not 8, and a create the server
    refuses (a quota, a webhook) is not sent once per worker. After a batch with an error the
    rest are not run, and the batch's first error is raised."""
    done, size = 0, 1
    while done < len(calls):
        batch = calls[done : done + size]
        if len(batch) == 1:
            batch[0]()
        else:
            futures = [pool.submit(call) for call in batch]
            errors = [error for future in futures if (error := future.exception()) is not None]
            if errors:
                raise errors[0]
        done += len(batch)
        size *= 2


def _creates_pod(action: Action) -> bool:
    return isinstance(action, ApplyObject) and action.body["kind"] == "Pod"


@dataclass(frozen=True)
class Outcome:
    """What the work queue does with the key next."""

    requeue_after: float | None = None
    failed: bool = False
    """True: retry with the key's own exponential backoff."""


class NodeHealthCache:
    """Reads nodes only for pods that need it (stuck terminating, a gang being settled)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, NodeHealth]] = {}

    def health(self, kube: Kube, node: str) -> NodeHealth:
        with self._lock:
            cached = self._seen.get(node)
        if cached is not None and time.monotonic() - cached[0] < NODE_HEALTH_TTL_SECONDS:
            return cached[1]
        health = kube.node_health(node)
        with self._lock:
            self._seen[node] = (time.monotonic(), health)
        return health


class QueueVerdictCache:
    """Reads Kueue's Workload only for Queued gangs, and each at most once per TTL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, QueueVerdict | None]] = {}

    def verdict(self, kube: Kube, namespace: str, workload: str) -> QueueVerdict | None:
        key = (namespace, workload)
        with self._lock:
            cached = self._seen.get(key)
        if cached is not None and time.monotonic() - cached[0] < QUEUE_VERDICT_TTL_SECONDS:
            return cached[1]
        body = kube.kueue_workload(namespace, workload)
        verdict = kueue_verdict(body) if body is not None else None
        with self._lock:
            self._seen[key] = (time.monotonic(), verdict)
        return verdict

    def forget(self, namespace: str, workload: str) -> None:
        with self._lock:
            self._seen.pop((namespace, workload), None)


class Controller:
    def __init__(
        self,
        store: Store,
        settings: OperatorSettings,
        instance: str,
        progress_reader: ProgressReader,
        expected: CreateExpectations,
    ) -> None:
        self.store = store
        self.expected = expected
        self.settings = settings
        self.instance = instance
        self.progress = progress_reader
        self.nodes = NodeHealthCache()
        self.queues = QueueVerdictCache()
        self.render_settings = RenderSettings(default_image=settings.default_image)
        self._pod_creates = ThreadPoolExecutor(POD_CREATE_THREADS, thread_name_prefix="create")

    def reconcile(self, kube: Kube, key: JobKey) -> Outcome:
        body = self.store.job(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.progress.watch(key, None)
            self.expected.forget(key)
            return Outcome()
        namespace = key[0]
        if self.expected.pending(
            key, lambda pod: self.store.cached("Pod", namespace, pod) is not None
        ):
            # Planned from this cache, a pod just created would read as vanished; its event
            # wakes the job.
            return Outcome()
        started = time.monotonic()
        try:
            outcome = self._attempt(kube, key, body)
        except NotLeaderError:
            # The term ended mid-reconcile: nothing more is sent, not even an error report.
            # The next leader queues every job at once.
            metrics.RECONCILE_SECONDS.labels("abandoned").observe(time.monotonic() - started)
            raise
        label = "retry" if outcome.failed else "ok"
        metrics.RECONCILE_SECONDS.labels(label).observe(time.monotonic() - started)
        return outcome

    def _attempt(self, kube: Kube, key: JobKey, body: dict[str, Any]) -> Outcome:
        try:
            return self._reconcile(kube, key, body)
        except NotLeaderError:
            raise
        except ConflictError:
            # Our cached body is older than the server's: its event is on the way.
            return Outcome(failed=True)
        except GoneError:
            self.store.drop_job(key, body["metadata"].get("uid"))
            self.progress.watch(key, None)
            return Outcome()
        except ForeignObjectError as error:
            log.warning("job %s/%s is blocked: %s", *key, error)
            self._report_error(kube, body, "ForeignObject", str(error))
            return Outcome(failed=True)
        except ApiException as error:
            metrics.RECONCILE_ERRORS.inc()
            log.warning("reconcile of %s/%s failed: %s %s", *key, error.status, error.reason)
            reason = str(error.reason or "ApiError").replace(" ", "")
            self._report_error(kube, body, reason, f"{error.status}: {_api_message(error)}")
            return Outcome(failed=True)
        except (OSError, urllib3.exceptions.HTTPError) as error:
            metrics.RECONCILE_ERRORS.inc()
            log.warning("reconcile of %s/%s: API server unreachable: %s", *key, error)
            return Outcome(failed=True)
        except Exception as error:
            # A bug of ours must still reach the job's owner, and must not stop other jobs.
            metrics.RECONCILE_ERRORS.inc()
            log.exception("reconcile of %s/%s crashed", *key)
            self._report_error(kube, body, "InternalError", f"{type(error).__name__}: {error}")
            return Outcome(failed=True)

    def _reconcile(self, kube: Kube, key: JobKey, body: dict[str, Any]) -> Outcome:
        now = datetime.now(UTC)
        status = LLMTrainingJobStatus.model_validate(body.get("status") or {})
        generation = int(body["metadata"].get("generation", 1))
        try:
            job = validate_job(body, self.settings.passthrough)
        except ValidationError as error:
            self.progress.watch(key, None)
            invalid = plan_invalid(status, generation, explain_validation_error(error), now)
            self._execute(kube, body, status, invalid, now)
            return Outcome()
        ref = JobRef(
            name=key[1],
            namespace=key[0],
            uid=body["metadata"]["uid"],
            queue_name=(body["metadata"].get("labels") or {}).get(KUEUE_QUEUE_LABEL),
        )
        view = JobView(
            ref=ref,
            generation=generation,
            created=parse_time(body["metadata"]["creationTimestamp"]) or now,
            spec=job.spec,
            status=status,
        )
        observed = self._observe(kube, ref, status, claim_name(ref, job.spec), now)
        settings = self.render_settings
        result = plan(
            view, lambda spec, attempt: render(ref, spec, settings, attempt), observed, now
        )
        self._watch_progress(ref, result.status, observed.workers, job.spec.metrics_port)
        deferred = self._execute(kube, body, status, result, now)
        waits = [w for w in (result.requeue_after, deferred) if w is not None]
        return Outcome(requeue_after=min(waits) if waits else None)

    def _observe(
        self,
        kube: Kube,
        ref: JobRef,
        status: LLMTrainingJobStatus,
        claim: str,
        now: datetime,
    ) -> Observed:
        key = (ref.namespace, ref.name)
        owned = self.store.owned(key)
        workers = [w for b in owned if b["kind"] == "Pod" and (w := worker_state(b)) is not None]
        supporting = [b for b in owned if b["kind"] != "Pod"]
        # A claim kept after its job (Retain) has no owner: it is found by its name.
        kept_claim = self.store.cached("PersistentVolumeClaim", key[0], claim)
        if kept_claim is not None and kept_claim not in supporting:
            supporting.append(kept_claim)
        hashes = {
            f"{b['kind']}/{b['metadata']['name']}": (b["metadata"].get("annotations") or {}).get(
                SPEC_HASH_ANNOTATION, ""
            )
            for b in supporting
        }
        return Observed(
            workers=workers,
            applied_hashes=hashes,
            progress=self.progress.latest(key, status.attempt),
            node_health=self._node_health(kube, status, workers, now),
            queue_verdict=self._queue_verdict(kube, ref, status),
            exit_checkpoint=self.store.exit_checkpoint(key),
        )

    def _watch_progress(
        self,
        ref: JobRef,
        status: LLMTrainingJobStatus,
        workers: list[WorkerState],
        metrics_port: int,
    ) -> None:
        """Rank 0 of a Running gang is read, decided on the status this pass plans: the pass
        that marks the gang Running may be the last one for a while (every worker came up in
        one pod update and nothing else changes), and must not leave its progress unread."""
        key = (ref.namespace, ref.name)
        rank0 = next(
            (w for w in workers if w.index == 0 and w.attempt == status.attempt and w.pod_ip),
            None,
        )
        if status.phase == "Running" and rank0 is not None and rank0.pod_ip is not None:
            self.progress.watch(key, Target(status.attempt, rank0.pod_ip, metrics_port))
        else:
            self.progress.watch(key, None)

    def _queue_verdict(
        self, kube: Kube, ref: JobRef, status: LLMTrainingJobStatus
    ) -> QueueVerdict | None:
        """Kueue's reason for a Queued gang, read only while it is Queued."""
        if ref.queue_name is None or status.attempt == 0:
            return None
        workload = pod_group_name(ref, status.attempt)
        if status.phase != "Queued":
            self.queues.forget(ref.namespace, workload)
            return None
        return self.queues.verdict(kube, ref.namespace, workload)

    def _node_health(
        self, kube: Kube, status: LLMTrainingJobStatus, workers: list[WorkerState], now: datetime
    ) -> dict[str, NodeHealth]:
        """Nodes are read only when a decision depends on them: a pod stuck terminating, or a
        failed gang whose restart may be a disruption."""
        failure = status.last_failure
        settling = status.phase == "Restarting" or (
            status.phase in ("Pending", "Running")
            and failure is not None
            and failure.attempt == status.attempt
        )
        nodes = {
            w.node_name
            for w in workers
            if w.node_name
            and (settling or (w.deletion_deadline is not None and now > w.deletion_deadline))
        }
        return {node: self.nodes.health(kube, node) for node in sorted(nodes)}

    def _execute(
        self,
        kube: Kube,
        body: dict[str, Any],
        old: LLMTrainingJobStatus,
        result: Plan,
        now: datetime,
    ) -> float | None:
        """Writes the status (when due), then acts. Returns the seconds until a deferred
        progress-only write is due, if one was deferred."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        new_status = _clear_reconcile_error(result.status)
        due = status_write_due(old, new_status, now, self.settings.progress_interval_seconds)
        deferred = None
        if due == 0:
            updated = kube.write_status(namespace, name, meta["resourceVersion"], _dump(new_status))
            self.store.put_job(updated)
        elif due is not None:
            deferred = due
        for pods, actions in itertools.groupby(result.actions, key=_creates_pod):
            if pods:
                creates = [
                    functools.partial(self._create_pod, kube, (namespace, name), action)
                    for action in actions
                    if isinstance(action, ApplyObject)
                ]
                slow_start(self._pod_creates, creates)
                continue
            for action in actions:
                if isinstance(action, ApplyObject):
                    self._apply(kube, namespace, action)
                elif isinstance(action, DeletePod):
                    if not kube.delete_pod(
                        namespace, action.name, action.uid, action.grace_seconds
                    ):
                        # The cache held a pod the server no longer has: drop it now.
                        dropped = {"namespace": namespace, "name": action.name, "uid": action.uid}
                        self.store.drop_owned("Pod", {"metadata": dropped})
                elif isinstance(action, DeleteJob):
                    kube.delete_job(namespace, name)
        for event in result.events:
            kube.emit_event(body, event, self.instance)
        metrics.record(result, old.phase)
        return deferred

    def _create_pod(self, kube: Kube, key: JobKey, action: ApplyObject) -> None:
        pod = action.body["metadata"]["name"]
        self.expected.expect(key, pod)
        try:
            self._apply(kube, key[0], action)
        except BaseException:
            self.expected.observed(key, pod)  # not created: no event is coming
            raise

    def _apply(self, kube: Kube, namespace: str, action: ApplyObject) -> None:
        kind = action.body["kind"]
        cached = self.store.cached(kind, namespace, action.body["metadata"]["name"])
        server_copy = kube.apply(action.body, cached)
        if server_copy is not None:
            self.store.put_owned(kind, server_copy)

    def _report_error(self, kube: Kube, body: dict[str, Any], reason: str, message: str) -> None:
        """Reconcile errors belong in the job's status, where its owner looks, not only in
        our log: a condition and an event, each written once per distinct error."""
        try:
            fresh = kube.get_job(body["metadata"]["namespace"], body["metadata"]["name"])
        except (ApiException, OSError, urllib3.exceptions.HTTPError) as error:
            log.warning("could not read the job to record its reconcile error: %s", error)
            return
        if fresh is None:
            return
        status = LLMTrainingJobStatus.model_validate(fresh.get("status") or {})
        message = message[:2000]
        if any(
            c.type == RECONCILE_ERROR_CONDITION and c.reason == reason and c.message == message
            for c in status.conditions
        ):
            return
        conditions = set_condition(
            status.conditions,
            RECONCILE_ERROR_CONDITION,
            True,
            reason,
            message,
            datetime.now(UTC),
            fresh["metadata"].get("generation"),
        )
        updated = status.model_copy(update={"conditions": conditions})
        try:
            written = kube.write_status(
                fresh["metadata"]["namespace"],
                fresh["metadata"]["name"],
                fresh["metadata"]["resourceVersion"],
                _dump(updated),
            )
        except (ConflictError, GoneError, ApiException, OSError) as again:
            log.warning("could not record the reconcile error in status: %s", again)
            return
        self.store.put_job(written)
        kube.emit_event(fresh, Event("Warning", reason, message), self.instance)


def _clear_reconcile_error(status: LLMTrainingJobStatus) -> LLMTrainingJobStatus:
    kept = [c for c in status.conditions if c.type != RECONCILE_ERROR_CONDITION]
    if len(kept) == len(status.conditions):
        return status
    return status.model_copy(update={"conditions": kept})


def _dump(status: LLMTrainingJobStatus) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(mode="json", by_alias=True)
    return dumped


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message", error.body))
    except ValueError:
        return str(error.body)
