"""kopf registrations only: watch events feed the cache and wake the job's reconcile.

Only low-level `on.event` handlers: kopf's daemons and timers would put a finalizer on
every job (blocking its deletion while the operator is down), and its change handlers
would write their own annotations. Time-based rules are served by the work queue's
delayed re-adds instead.
"""

import logging
import socket
import threading
from typing import Any, cast

import kopf

from llmjob_operator.api import GROUP, PLURAL, VERSION
from llmjob_operator.controller import Controller
from llmjob_operator.kube import Kube, load_config
from llmjob_operator.metrics import serve
from llmjob_operator.render import JOB_NAME_LABEL
from llmjob_operator.settings import OperatorSettings
from llmjob_operator.store import JobKey, Store
from llmjob_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

store = Store()
queue: WorkQueue[JobKey] = WorkQueue()
_settings: OperatorSettings | None = None
# Seconds between kopf's watch reconnects: a silent stall of a long watch is kopf's top pitfall.
WATCH_SERVER_TIMEOUT = 300
WATCH_CLIENT_TIMEOUT = 330


def configure(settings: OperatorSettings) -> None:
    """Called by main() before kopf starts."""
    global _settings  # noqa: PLW0603 - kopf handlers are module-level by design
    _settings = settings


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    assert _settings is not None, "configure() must run before kopf starts"
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING
    if _settings.namespaces:
        # Exact namespace names need none of kopf's cluster-wide scans (namespaces, to match
        # glob patterns; CRDs, to notice new resources): namespaced RBAC grants neither.
        settings.scanning.disabled = True
    load_config()
    seed_kube = Kube()
    namespaces: list[str | None] = list(_settings.namespaces) or [None]
    for namespace in namespaces:
        for pod in seed_kube.list_worker_pods(namespace):
            store.put_owned("Pod", pod)
    serve(_settings.metrics_port, store.jobs)
    controller = Controller(store, _settings, instance=socket.gethostname())
    for number in range(_settings.workers):
        threading.Thread(
            target=_work, args=(controller,), name=f"reconcile-{number}", daemon=True
        ).start()
    log.info("llmjob operator started: %s", _settings)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    queue.close()


def _work(controller: Controller) -> None:
    kube = Kube()
    while (key := queue.get()) is not None:
        try:
            again = controller.reconcile(kube, key)
        except Exception:
            log.exception("reconcile of %s/%s crashed", *key)
            again = 5.0
        finally:
            queue.done(key)
        if again is not None:
            queue.add_after(key, again)


@kopf.on.event(GROUP, VERSION, PLURAL)
def job_event(event: kopf.RawEvent, **_: Any) -> None:
    body = _plain(event["object"])
    if event.get("type") == "DELETED":
        store.drop_job((body["metadata"]["namespace"], body["metadata"]["name"]))
        return
    queue.add(store.put_job(body))


def _plain(body: kopf.RawBody) -> dict[str, Any]:
    """kopf's typed body as the plain dict the rest of the operator works with."""
    return cast(dict[str, Any], body)


def _owned_event(kind: str, event: kopf.RawEvent) -> None:
    body = _plain(event["object"])
    if event.get("type") == "DELETED":
        key = store.drop_owned(kind, body)
    else:
        key = store.put_owned(kind, body)
    if key is not None and store.job(key) is not None:
        queue.add(key)


@kopf.on.event("v1", "pods", labels={JOB_NAME_LABEL: kopf.PRESENT})
def pod_event(event: kopf.RawEvent, **_: Any) -> None:
    _owned_event("Pod", event)


@kopf.on.event("v1", "services", labels={JOB_NAME_LABEL: kopf.PRESENT})
def service_event(event: kopf.RawEvent, **_: Any) -> None:
    _owned_event("Service", event)


@kopf.on.event("v1", "configmaps", labels={JOB_NAME_LABEL: kopf.PRESENT})
def config_map_event(event: kopf.RawEvent, **_: Any) -> None:
    _owned_event("ConfigMap", event)


@kopf.on.event("v1", "persistentvolumeclaims", labels={JOB_NAME_LABEL: kopf.PRESENT})
def claim_event(event: kopf.RawEvent, **_: Any) -> None:
    _owned_event("PersistentVolumeClaim", event)
