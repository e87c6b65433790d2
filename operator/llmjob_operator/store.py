"""The operator's cache of jobs and of the objects they own: an informer's store.

- Never older than what it holds: a body with an older resourceVersion than the cached one
  (a late event, a stale read) is ignored.
- Ownership is the controller ownerReference's UID, never a label or a name: an object is the
  job's only while its controller reference carries the UID of the job cached under that key.
  A same-named object of a deleted job (or of anyone else) is never taken as this job's.
- `replace` is a relist: whatever the list no longer holds is dropped (a watch gap's deletes),
  unless the cache already holds something newer than the list.
- Only what the planner reads is kept (`slim`): managedFields, pod specs and the like are
  dropped before caching.
- A worker's exit report (the newest checkpoint it committed, in its termination message) is
  kept per job past the pod's deletion: the pods of a preempted gang are often gone by the
  time the job's reconcile runs, and /metrics went with them.
"""

import threading
from collections.abc import Iterable
from typing import Any

from llmjob_operator.observe import ExitCheckpoint, exit_checkpoint

JobKey = tuple[str, str]
ObjectKey = tuple[str, str, str]
Body = dict[str, Any]

# Fields of a worker pod's spec that the operator reads (the node, for node-loss checks; the
# scheduling gates, for a gang waiting for admission by a queue).
_POD_SPEC_FIELDS = ("nodeName", "schedulingGates")
_STATUS_FIELDS = ("phase", "reason", "message", "conditions", "containerStatuses", "podIP")
_METADATA_FIELDS = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
)


def resource_version(body: Body) -> int | None:
    """etcd's revision as an integer; None where a server hands out something else."""
    value = body.get("metadata", {}).get("resourceVersion")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def is_older(candidate: Body, cached: Body | None) -> bool:
    """True when `candidate` is an older version of the object `cached` holds."""
    if cached is None:
        return False
    if candidate["metadata"].get("uid") != cached["metadata"].get("uid"):
        return False  # another object under the same name: the newer event wins
    new, old = resource_version(candidate), resource_version(cached)
    return new is not None and old is not None and new < old


def slim(kind: str, body: Body) -> Body:
    """The part of an owned object the planner reads."""
    meta = body.get("metadata", {})
    kept: Body = {
        "kind": kind,
        "metadata": {k: meta[k] for k in _METADATA_FIELDS if k in meta},
    }
    if kind == "Pod":
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        kept["spec"] = {k: spec[k] for k in _POD_SPEC_FIELDS if k in spec}
        kept["status"] = {k: status[k] for k in _STATUS_FIELDS if k in status}
    return kept


def slim_job(body: Body) -> Body:
    meta = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
    return {**body, "metadata": meta}


def controller_uid(body: Body) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            uid: str | None = ref.get("uid")
            return uid
    return None


def _object_key(kind: str, body: Body) -> ObjectKey:
    meta = body["metadata"]
    return (kind, meta["namespace"], meta["name"])


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[JobKey, Body] = {}
        self._job_by_uid: dict[str, JobKey] = {}
        # Owned objects by (kind, namespace, name), indexed by their controller's UID.
        self._objects: dict[ObjectKey, Body] = {}
        self._by_owner: dict[str, set[ObjectKey]] = {}
        # The newest exit report of any of a job's pods, by the job's UID.
        self._exit_checkpoints: dict[str, ExitCheckpoint] = {}

    # -- jobs --------------------------------------------------------------------------

    def put_job(self, body: Body) -> tuple[JobKey, bool]:
        """Cache a job body; returns its key and whether the cache changed (a newer version)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            cached = self._jobs.get(key)
            if is_older(body, cached) or (
                cached is not None
                and cached["metadata"].get("uid") == meta.get("uid")
                and cached["metadata"].get("resourceVersion") == meta.get("resourceVersion")
            ):
                return key, False
            if cached is not None and cached["metadata"].get("uid") != meta.get("uid"):
                self._forget_job_uid(cached["metadata"].get("uid", ""))
            self._jobs[key] = slim_job(body)
            self._job_by_uid[meta.get("uid", "")] = key
        return key, True

    def drop_job(self, key: JobKey, uid: str | None = None) -> bool:
        """Forget a job (deleted, or 404); with `uid`, only if the cached job is that one."""
        with self._lock:
            cached = self._jobs.get(key)
            if cached is None or (uid is not None and cached["metadata"].get("uid") != uid):
                return False
            del self._jobs[key]
            self._forget_job_uid(cached["metadata"].get("uid", ""))
        return True

    def job(self, key: JobKey) -> Body | None:
        with self._lock:
            return self._jobs.get(key)

    def jobs(self) -> list[Body]:
        with self._lock:
            return list(self._jobs.values())

    def job_keys(self) -> list[JobKey]:
        with self._lock:
            return list(self._jobs)

    def replace_jobs(
        self, listed: Iterable[Body], list_version: int | None, namespace: str | None
    ) -> set[JobKey]:
        """A relist of the jobs (of one namespace, or all): returns the keys of jobs that
        changed or vanished."""
        fresh = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in listed}
        touched: set[JobKey] = set()
        with self._lock:
            for key, cached in list(self._jobs.items()):
                version = resource_version(cached)
                if (
                    (namespace is not None and key[0] != namespace)
                    or key in fresh
                    or (list_version is not None and version is not None and version > list_version)
                ):
                    continue
                del self._jobs[key]
                self._forget_job_uid(cached["metadata"].get("uid", ""))
                touched.add(key)
        for body in fresh.values():
            key, changed = self.put_job(body)
            if changed:
                touched.add(key)
        return touched

    # -- owned objects -------------------------------------------------------------------

    def put_owned(self, kind: str, body: Body) -> bool:
        """Cache a Pod/Service/ConfigMap/claim; returns whether the cache changed."""
        key = _object_key(kind, body)
        slimmed = slim(kind, body)
        with self._lock:
            cached = self._objects.get(key)
            if is_older(body, cached) or cached == slimmed:
                return False
            if cached is not None:
                self._unindex(key, cached)
            self._objects[key] = slimmed
            owner = controller_uid(slimmed)
            if owner is not None:
                self._by_owner.setdefault(owner, set()).add(key)
            if kind == "Pod":
                self._note_exit_checkpoint(slimmed)
        return True

    def drop_owned(self, kind: str, body: Body) -> bool:
        """Forget the object `body` is a version of (DELETED, or 404); a same-named object
        with another UID (a newer one) stays."""
        key = _object_key(kind, body)
        with self._lock:
            cached = self._objects.get(key)
            if cached is None or cached["metadata"].get("uid") != body["metadata"].get("uid"):
                return False
            del self._objects[key]
            self._unindex(key, cached)
            if kind == "Pod":
                # A DELETED event carries the pod's final state.
                self._note_exit_checkpoint(body)
        return True

    def exit_checkpoint(self, key: JobKey) -> ExitCheckpoint | None:
        """The newest checkpoint any pod of the cached job reported as it ended."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                return None
            return self._exit_checkpoints.get(job["metadata"].get("uid", ""))

    def _note_exit_checkpoint(self, pod: Body) -> None:
        owner = controller_uid(pod)
        # Only for a cached job: a pod's DELETED event after its job's own (garbage
        # collection) must not leave a report behind for a UID nobody will drop again.
        if owner is None or owner not in self._job_by_uid:
            return
        report = exit_checkpoint(pod)
        if report is None:
            return
        if report.supersedes(self._exit_checkpoints.get(owner)):
            self._exit_checkpoints[owner] = report

    def _forget_job_uid(self, uid: str) -> None:
        self._job_by_uid.pop(uid, None)
        self._exit_checkpoints.pop(uid, None)

    def owner_of(self, body: Body) -> JobKey | None:
        """The cached job whose UID the object's controller reference carries."""
        uid = controller_uid(body)
        with self._lock:
            return self._job_by_uid.get(uid) if uid is not None else None

    def owned(self, key: JobKey) -> list[Body]:
        """Objects whose controller ownerReference is the cached job's UID."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                return []
            keys = self._by_owner.get(job["metadata"].get("uid", ""), set())
            return [self._objects[k] for k in keys]

    def cached(self, kind: str, namespace: str, name: str) -> Body | None:
        """Whatever object of that name the cache holds, ours or not."""
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def replace(
        self, kind: str, listed: Iterable[Body], list_version: int | None, namespace: str | None
    ) -> set[JobKey]:
        """A relist of `kind` (in one namespace, or all): cache what was listed, drop what
        vanished. Objects the cache holds at a newer resourceVersion than the list stay (their
        events came after it). Returns the jobs whose objects changed."""
        fresh = {_object_key(kind, body): body for body in listed}
        touched: list[Body] = []
        with self._lock:
            for key, cached in list(self._objects.items()):
                if key[0] != kind or key in fresh or namespace not in (None, key[1]):
                    continue
                version = resource_version(cached)
                if list_version is not None and version is not None and version > list_version:
                    continue
                del self._objects[key]
                self._unindex(key, cached)
                touched.append(cached)
        for body in fresh.values():
            if self.put_owned(kind, body):
                touched.append(body)
        return {job for body in touched if (job := self.owner_of(body)) is not None}

    def _unindex(self, key: ObjectKey, body: Body) -> None:
        owner = controller_uid(body)
        if owner is not None and (keys := self._by_owner.get(owner)) is not None:
            keys.discard(key)
            if not keys:
                del self._by_owner[owner]
