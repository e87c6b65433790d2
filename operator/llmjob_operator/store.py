"""The operator's cache of jobs and the objects they own, fed by kopf's watch events.

One index keyed by (namespace, job name): reconciles read it instead of listing.
"""

import threading
from typing import Any

from llmjob_operator.render import JOB_NAME_LABEL

JobKey = tuple[str, str]


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[JobKey, dict[str, Any]] = {}
        self._owned: dict[JobKey, dict[str, dict[str, Any]]] = {}

    def put_job(self, body: dict[str, Any]) -> JobKey:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        with self._lock:
            self._jobs[key] = body
        return key

    def drop_job(self, key: JobKey) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def job(self, key: JobKey) -> dict[str, Any] | None:
        with self._lock:
            return self._jobs.get(key)

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._jobs.values())

    def put_owned(self, kind: str, body: dict[str, Any]) -> JobKey | None:
        """Record a labelled Pod/Service/ConfigMap/claim; returns the job it belongs to."""
        key = owner_key(body)
        if key is not None:
            with self._lock:
                objects = self._owned.setdefault(key, {})
                objects[f"{kind}/{body['metadata']['name']}"] = {**body, "kind": kind}
        return key

    def drop_owned(self, kind: str, body: dict[str, Any]) -> JobKey | None:
        key = owner_key(body)
        if key is not None:
            with self._lock:
                self._owned.get(key, {}).pop(f"{kind}/{body['metadata']['name']}", None)
        return key

    def owned(self, key: JobKey) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._owned.get(key, {}).values())


def owner_key(body: dict[str, Any]) -> JobKey | None:
    meta = body.get("metadata", {})
    job = (meta.get("labels") or {}).get(JOB_NAME_LABEL)
    return (meta["namespace"], job) if job else None
