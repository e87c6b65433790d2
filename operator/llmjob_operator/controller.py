"""One reconcile of one job: observe (cache + /metrics) -> render -> plan -> execute.

The only place that joins the pure planner to I/O. Writes the status first, then acts,
so the status stays the durable record (see reconcile.py).
"""

import json
import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from llmjob_operator import metrics, progress
from llmjob_operator.api import LLMTrainingJobStatus, validate_job
from llmjob_operator.kube import ConflictError, Kube
from llmjob_operator.observe import Observed, TrainerProgress, parse_time, worker_state
from llmjob_operator.policy import set_condition
from llmjob_operator.reconcile import (
    SPEC_HASH_ANNOTATION,
    ApplyObject,
    DeleteJob,
    DeletePod,
    JobView,
    Plan,
    plan,
    plan_invalid,
)
from llmjob_operator.render import JobRef, RenderSettings, render
from llmjob_operator.settings import OperatorSettings
from llmjob_operator.store import JobKey, Store

log = logging.getLogger(__name__)
RECONCILE_ERROR_CONDITION = "ReconcileError"
CONFLICT_RETRY_SECONDS = 0.5
ERROR_RETRY_SECONDS = 5.0


class Controller:
    def __init__(self, store: Store, settings: OperatorSettings, instance: str) -> None:
        self.store = store
        self.settings = settings
        self.instance = instance
        self.render_settings = RenderSettings(default_image=settings.default_image)
        self._last_scrape: dict[JobKey, tuple[float, TrainerProgress]] = {}

    def reconcile(self, kube: Kube, key: JobKey) -> float | None:
        """Reconcile one job; returns seconds until it wants to be looked at again."""
        body = self.store.job(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self._last_scrape.pop(key, None)
            return None
        started = time.monotonic()
        try:
            return self._reconcile(kube, key, body)
        except ConflictError:
            return CONFLICT_RETRY_SECONDS
        except ApiException as error:
            metrics.RECONCILE_ERRORS.inc()
            log.warning("reconcile of %s/%s failed: %s %s", *key, error.status, error.reason)
            reason = str(error.reason or "ApiError").replace(" ", "")
            self._report_error(kube, body, reason, f"{error.status}: {_api_message(error)}")
            return ERROR_RETRY_SECONDS
        except Exception as error:
            # A bug of ours must still reach the job's owner, and must not stop other jobs.
            metrics.RECONCILE_ERRORS.inc()
            log.exception("reconcile of %s/%s crashed", *key)
            self._report_error(kube, body, "InternalError", f"{type(error).__name__}: {error}")
            return ERROR_RETRY_SECONDS
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    def _reconcile(self, kube: Kube, key: JobKey, body: dict[str, Any]) -> float | None:
        now = datetime.now(UTC)
        status = LLMTrainingJobStatus.model_validate(body.get("status") or {})
        generation = int(body["metadata"].get("generation", 1))
        try:
            job = validate_job(body, self.settings.passthrough)
        except ValidationError as error:
            self._execute(
                kube, body, status, plan_invalid(status, generation, _explain(error), now)
            )
            return None
        ref = JobRef(name=key[1], namespace=key[0], uid=body["metadata"]["uid"])
        view = JobView(
            ref=ref,
            generation=generation,
            created=parse_time(body["metadata"]["creationTimestamp"]) or now,
            spec=job.spec,
            status=status,
        )
        observed = self._observe(key, status, job.spec.metrics_port)
        desired = partial(render, ref, job.spec, self.render_settings)
        result = plan(view, lambda attempt: desired(attempt=attempt), observed, now)
        self._execute(kube, body, status, result)
        wait = result.requeue_after
        if result.status.phase in ("Pending", "Running"):
            interval = self.settings.progress_interval_seconds
            wait = interval if wait is None else min(wait, interval)
        return wait

    def _observe(self, key: JobKey, status: LLMTrainingJobStatus, metrics_port: int) -> Observed:
        owned = self.store.owned(key)
        workers = [w for b in owned if b["kind"] == "Pod" and (w := worker_state(b)) is not None]
        others = [b for b in owned if b["kind"] != "Pod"]
        hashes = {
            f"{b['kind']}/{b['metadata']['name']}": (b["metadata"].get("annotations") or {}).get(
                SPEC_HASH_ANNOTATION, ""
            )
            for b in others
        }
        rank0 = next(
            (w for w in workers if w.index == 0 and w.attempt == status.attempt and w.pod_ip),
            None,
        )
        seen = None
        if status.phase == "Running" and rank0 is not None and rank0.pod_ip is not None:
            seen = self._scrape(key, rank0.pod_ip, metrics_port)
        return Observed(workers=workers, applied_hashes=hashes, progress=seen)

    def _scrape(self, key: JobKey, pod_ip: str, port: int) -> TrainerProgress:
        """At most one /metrics read per progress interval per job, however often we wake."""
        last = self._last_scrape.get(key)
        if last and time.monotonic() - last[0] < self.settings.progress_interval_seconds / 2:
            return last[1]
        seen = progress.scrape(pod_ip, port)
        if seen.error:
            log.info("progress of %s/%s unavailable: %s", *key, seen.error)
        self._last_scrape[key] = (time.monotonic(), seen)
        return seen

    def _execute(
        self, kube: Kube, body: dict[str, Any], old: LLMTrainingJobStatus, result: Plan
    ) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        new_status = _clear_reconcile_error(result.status)
        if _dump(new_status) != _dump(old):
            updated = kube.write_status(namespace, name, meta["resourceVersion"], _dump(new_status))
            self.store.put_job(updated)
        for action in result.actions:
            if isinstance(action, ApplyObject):
                kube.apply(action.body)
            elif isinstance(action, DeletePod):
                kube.delete_pod(namespace, action.name, force=action.force)
            elif isinstance(action, DeleteJob):
                kube.delete_job(namespace, name)
        for event in result.events:
            kube.emit_event(body, event, self.instance)
        metrics.record(result, old.phase)

    def _report_error(self, kube: Kube, body: dict[str, Any], reason: str, message: str) -> None:
        """Reconcile errors belong in the job's status, where its owner looks, not only in
        our log."""
        try:
            fresh = kube.get_job(body["metadata"]["namespace"], body["metadata"]["name"])
        except ApiException as error:
            log.warning("could not read the job to record its reconcile error: %s", error.reason)
            return
        if fresh is None:
            return
        status = LLMTrainingJobStatus.model_validate(fresh.get("status") or {})
        conditions = set_condition(
            status.conditions,
            RECONCILE_ERROR_CONDITION,
            True,
            reason,
            message[:2000],
            datetime.now(UTC),
            fresh["metadata"].get("generation"),
        )
        updated = status.model_copy(update={"conditions": conditions})
        try:
            kube.write_status(
                fresh["metadata"]["namespace"],
                fresh["metadata"]["name"],
                fresh["metadata"]["resourceVersion"],
                _dump(updated),
            )
        except (ConflictError, ApiException) as again:
            log.warning("could not record the reconcile error in status: %s", again)


def _clear_reconcile_error(status: LLMTrainingJobStatus) -> LLMTrainingJobStatus:
    kept = [c for c in status.conditions if c.type != RECONCILE_ERROR_CONDITION]
    if len(kept) == len(status.conditions):
        return status
    return status.model_copy(update={"conditions": kept})


def _dump(status: LLMTrainingJobStatus) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(mode="json", by_alias=True)
    return dumped


def _explain(error: ValidationError) -> str:
    """`spec.training.seqLen: ...` lines: the field first, then what is wrong with it."""
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        lines.append(f"{location}: {item['msg']}")
    return "; ".join(lines)


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message", error.body))
    except ValueError:
        return str(error.body)
