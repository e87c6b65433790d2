"""The only module that talks to the Kubernetes API server."""

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from llmjob_operator import store
from llmjob_operator.api import GROUP, PLURAL, VERSION
from llmjob_operator.observe import NodeHealth, node_health
from llmjob_operator.reconcile import Event
from llmjob_operator.render import JOB_NAME_LABEL

FIELD_MANAGER = "llmjob-operator"
REPORTING_COMPONENT = "llmjob-operator"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
# Kueue's storage version since v0.15 (v1beta1 is still served).
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"

log = logging.getLogger(__name__)

# The client's own count of what it asked (the API server's count is the one tests hold us to).
API_REQUESTS = Counter(
    "llmjob_operator_api_requests_total",
    "Requests to the API server by client call and outcome (HTTP code, ok, or error).",
    ["call", "code"],
)
API_THROTTLED_SECONDS = Counter(
    "llmjob_operator_api_throttled_seconds_total",
    "Seconds writes waited for the client-side token bucket.",
)


def _creators(core: client.CoreV1Api) -> dict[str, Callable[..., Any]]:
    return {
        "Pod": core.create_namespaced_pod,
        "Service": core.create_namespaced_service,
        "ConfigMap": core.create_namespaced_config_map,
        "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim,
    }


def _readers(core: client.CoreV1Api) -> dict[str, Callable[..., Any]]:
    return {
        "Pod": core.read_namespaced_pod,
        "Service": core.read_namespaced_service,
        "ConfigMap": core.read_namespaced_config_map,
        "PersistentVolumeClaim": core.read_namespaced_persistent_volume_claim,
    }


def _patchers(core: client.CoreV1Api) -> dict[str, Callable[..., Any]]:
    return {
        "Service": core.patch_namespaced_service,
        "ConfigMap": core.patch_namespaced_config_map,
        "PersistentVolumeClaim": core.patch_namespaced_persistent_volume_claim,
    }


# Objects per page of a relist (list_kind).
LIST_PAGE_SIZE = 500


def _listers(core: client.CoreV1Api) -> dict[str, tuple[Callable[..., Any], Callable[..., Any]]]:
    return {
        "Pod": (core.list_pod_for_all_namespaces, core.list_namespaced_pod),
        "Service": (core.list_service_for_all_namespaces, core.list_namespaced_service),
        "ConfigMap": (core.list_config_map_for_all_namespaces, core.list_namespaced_config_map),
        "PersistentVolumeClaim": (
            core.list_persistent_volume_claim_for_all_namespaces,
            core.list_namespaced_persistent_volume_claim,
        ),
    }


# Owned objects outside the core API, by apiVersion and kind, with their plural: the gang
# schedulers' PodGroups (scheduling.gang), the kube-scheduler's own among them. They are not
# watched (a cluster may not serve them): the cache holds the copy the server returned to the
# create or the apply.
CUSTOM_KINDS: dict[tuple[str, str], str] = {
    ("scheduling.x-k8s.io/v1alpha1", "PodGroup"): "podgroups",
    ("scheduling.volcano.sh/v1beta1", "PodGroup"): "podgroups",
    ("scheduling.k8s.io/v1beta1", "PodGroup"): "podgroups",
}


class ConflictError(Exception):
    """The job changed since it was read: re-observe and plan again."""


class GoneError(Exception):
    """The job no longer exists (404): drop it from the cache; nothing to retry."""


class ForeignObjectError(Exception):
    """An object the job needs exists under that name but is not controlled by the job."""

    def __init__(self, kind: str, name: str, owner: str) -> None:
        super().__init__(
            f"{kind} {name} exists and is not controlled by this job (controller: {owner}); "
            "the operator will not change it: delete or rename it"
        )
        self.kind = kind
        self.name = name
        self.owner = owner


class TokenBucket:
    """Client-side write limit (client-go's QPS/burst): `take` blocks until a token is free."""

    def __init__(self, qps: float, burst: int) -> None:
        self._qps = qps
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Takes one token; returns the seconds it waited."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._qps)
            self._stamp = now
            self._tokens -= 1
            wait = -self._tokens / self._qps if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
        return wait


@dataclass(frozen=True)
class ClientLimits:
    """Every request's time-out, the shared write budget and the name of one operator
    process."""

    connect_timeout_seconds: float = 5.0
    request_timeout_seconds: float = 30.0
    writes: TokenBucket = field(default_factory=lambda: TokenBucket(qps=20.0, burst=40))
    # Sent as User-Agent: replicas share one service account, so an audit log tells them
    # apart only by this (handlers.py puts the election identity in it).
    user_agent: str = "llmjob-operator"


def load_config() -> None:
    """In a pod: the service account; elsewhere: KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


def _owner_description(body: dict[str, Any]) -> str:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return f"{ref.get('kind')} {ref.get('name')} uid {ref.get('uid')}"
    return "none"


Timeout = tuple[float, float]
Fence = Callable[[], float]
"""Asked before every write: the seconds the write may take, or it raises (leader.py's
NotLeaderError) when this replica no longer holds the lease the write was planned under."""


class Kube:
    def __init__(
        self,
        limits: ClientLimits,
        api_client: client.ApiClient | None = None,
        fence: Fence | None = None,
    ) -> None:
        if api_client is None:
            api_client = client.ApiClient()
            api_client.user_agent = limits.user_agent
        self.api_client = api_client
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.coordination = client.CoordinationV1Api(self.api_client)
        self.limits = limits
        self.timeout: Timeout = (limits.connect_timeout_seconds, limits.request_timeout_seconds)
        self.fence = fence

    def fenced(self, fence: Fence) -> "Kube":
        """This client (same connections and budget) with every write behind `fence`."""
        return Kube(self.limits, self.api_client, fence)

    def _write(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Every mutating request: a token from the shared bucket, the fence, then a request
        bounded by the time-out and by what the fence leaves."""
        waited = self.limits.writes.take()
        if waited > 0:
            API_THROTTLED_SECONDS.inc(waited)
        timeout = self.timeout
        if self.fence is not None:
            # Asked after the bucket's wait, which may have outlasted the lease.
            window = self.fence()
            timeout = (min(timeout[0], window), min(timeout[1], window))
        return self._request(call, timeout, *args, **kwargs)

    def _write_discarding(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """A write whose response nobody reads: taken raw, not decoded into the client's
        models (for the created pods, patches, deletes and events of a 100-job bench round
        that decoding was a seventh of the operator's CPU). The body is still read to the
        end, which hands the connection back to the pool."""
        response = self._write(call, *args, _preload_content=False, **kwargs)
        response.data  # noqa: B018 - reading the body releases the connection

    def _read(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._request(call, self.timeout, *args, **kwargs)

    def _request(
        self, call: Callable[..., Any], timeout: Timeout, *args: Any, **kwargs: Any
    ) -> Any:
        try:
            result = call(*args, _request_timeout=timeout, **kwargs)
        except ApiException as error:
            API_REQUESTS.labels(call.__name__, str(error.status)).inc()
            raise
        except (OSError, urllib3.exceptions.HTTPError):
            API_REQUESTS.labels(call.__name__, "error").inc()
            raise
        API_REQUESTS.labels(call.__name__, "ok").inc()
        return result

    # -- owned objects -----------------------------------------------------------------

    def apply(self, body: dict[str, Any], cached: dict[str, Any] | None) -> dict[str, Any] | None:
        """Creates what the cache does not hold; updates (server-side apply, our one field
        manager) only what the cache holds as the job's own. Pods are created, never patched.
        Raises ForeignObjectError rather than touching an object someone else controls.
        An object rendered without an owner (a claim kept after the job, Retain) is created
        once and then left alone, whoever made it. Returns the object as the server has it
        when a create found it already there."""
        kind = body["kind"]
        namespace = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        owners = body["metadata"].get("ownerReferences") or []
        owner_uid = owners[0]["uid"] if owners else None
        if (body["apiVersion"], kind) in CUSTOM_KINDS:
            return self._apply_custom(body, cached, owner_uid)
        if cached is None or kind == "Pod":
            return self._create(kind, namespace, name, body, owner_uid)
        if owner_uid is None:
            return None
        if store.controller_uid(cached) != owner_uid:
            raise ForeignObjectError(kind, name, _owner_description(cached))
        self._write_discarding(
            _patchers(self.core)[kind],
            name,
            namespace,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
        )
        return None

    def _create(
        self, kind: str, namespace: str, name: str, body: dict[str, Any], owner_uid: str | None
    ) -> dict[str, Any] | None:
        try:
            self._write_discarding(
                _creators(self.core)[kind], namespace, cast(Any, body), field_manager=FIELD_MANAGER
            )
            return None
        except ApiException as error:
            if error.status != 409:
                raise
        # Already there: ours (the cache is behind) or someone else's. Never adopt it.
        response = self._read(_readers(self.core)[kind], name, namespace, _preload_content=False)
        existing = _json(response)
        if owner_uid is not None and store.controller_uid(existing) != owner_uid:
            raise ForeignObjectError(kind, name, _owner_description(existing)) from None
        return existing

    def _apply_custom(
        self, body: dict[str, Any], cached: dict[str, Any] | None, owner_uid: str | None
    ) -> dict[str, Any]:
        """apply() for CUSTOM_KINDS, as for the core kinds (create when the cache has none,
        server-side apply when it has ours), but returns the server's copy: the only way one
        reaches the cache. A same-named object controlled by someone else is never touched."""
        group, version = body["apiVersion"].split("/")
        plural = CUSTOM_KINDS[(body["apiVersion"], body["kind"])]
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        where = (group, version, namespace, plural)
        if cached is None:
            try:
                created: dict[str, Any] = self._write(
                    self.custom.create_namespaced_custom_object,
                    *where,
                    body,
                    field_manager=FIELD_MANAGER,
                )
                return created
            except ApiException as error:
                if error.status != 409:
                    raise
            # Already there (after a restart the cache starts empty): ours, or someone else's.
            existing = cast(
                dict[str, Any], self._read(self.custom.get_namespaced_custom_object, *where, name)
            )
            if store.controller_uid(existing) != owner_uid:
                raise ForeignObjectError(body["kind"], name, _owner_description(existing))
            return existing
        if store.controller_uid(cached) != owner_uid:
            raise ForeignObjectError(body["kind"], name, _owner_description(cached))
        applied: dict[str, Any] = self._write(
            self.custom.patch_namespaced_custom_object,
            *where,
            name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
        )
        return applied

    def delete_pod(
        self, namespace: str, name: str, uid: str, grace_seconds: int | None = None
    ) -> bool:
        """Deletes exactly that pod (UID precondition): never a newer one of the same name.
        Returns False when that pod no longer exists (404, or the name is another pod's)."""
        options = client.V1DeleteOptions(
            grace_period_seconds=grace_seconds, preconditions=client.V1Preconditions(uid=uid)
        )
        try:
            self._write_discarding(self.core.delete_namespaced_pod, name, namespace, body=options)
        except ApiException as error:
            # 404: gone already; 409: the name now belongs to another pod.
            if error.status in (404, 409):
                return False
            raise
        return True

    def node_health(self, name: str) -> NodeHealth:
        """How a pod's node is: a stuck pod may be force-deleted only off a dead node."""
        try:
            response = self._read(self.core.read_node, name, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return "Gone"
            if error.status == 403:
                return "Unknown"
            raise
        return node_health(_json(response))

    def list_kind(
        self, kind: str, namespace: str | None, page_size: int = LIST_PAGE_SIZE
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Every object of `kind` carrying our job label (server-side selector), slimmed as
        the cache keeps it, and the list's resourceVersion: one relist of the cache. Read in
        pages of `page_size`, each slimmed as it arrives: 8,000 pods of a 1,000-job round
        are 69 MB of JSON, about 490 MB decoded at once (the operator's peak RSS before)."""
        slimmed: Callable[[dict[str, Any]], dict[str, Any]] = (
            store.slim_job if kind == "LLMTrainingJob" else partial(store.slim, kind)
        )
        items: list[dict[str, Any]] = []
        version: str | None = None
        token: str | None = None
        while True:
            page = self._list_page(kind, namespace, token, page_size)
            items += [slimmed(body) for body in page.get("items", [])]
            meta = page.get("metadata", {})
            # Every page is read at the first one's snapshot, which is the list's version.
            version = meta.get("resourceVersion") if version is None else version
            token = meta.get("continue")
            if not token:
                return items, int(version) if str(version).isdigit() else None

    def _list_page(
        self, kind: str, namespace: str | None, token: str | None, page_size: int
    ) -> dict[str, Any]:
        paging: dict[str, Any] = {"limit": page_size}
        if token:
            paging["_continue"] = token
        if kind == "LLMTrainingJob":
            where = (GROUP, VERSION) if namespace is None else (GROUP, VERSION, namespace)
            lister = (
                self.custom.list_cluster_custom_object
                if namespace is None
                else self.custom.list_namespaced_custom_object
            )
            data: dict[str, Any] = self._read(lister, *where, PLURAL, **paging)
            return data
        all_lister, namespaced_lister = _listers(self.core)[kind]
        selected = {"label_selector": JOB_NAME_LABEL, "_preload_content": False, **paging}
        if namespace is None:
            return _json(self._read(all_lister, **selected))
        return _json(self._read(namespaced_lister, namespace, **selected))

    # -- the leader election's Lease (leader.py) -----------------------------------------
    # Neither the write bucket nor the fence: the election is what the fence is made of, and a
    # renew queued behind reconcile writes could lose the lease.

    def get_lease(
        self, namespace: str, name: str, timeout: float
    ) -> tuple[dict[str, Any], str] | None:
        """The Lease's spec and resourceVersion; None when there is none."""
        try:
            response = self._request(
                self.coordination.read_namespaced_lease,
                (min(self.timeout[0], timeout), timeout),
                name,
                namespace,
                _preload_content=False,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        lease = _json(response)
        return lease.get("spec") or {}, lease["metadata"]["resourceVersion"]

    def create_lease(
        self, namespace: str, name: str, spec: dict[str, Any], timeout: float
    ) -> str | None:
        """Creates the Lease; its resourceVersion, or None when another replica made it first."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        return self._lease_write(
            self.coordination.create_namespaced_lease, timeout, namespace, body
        )

    def update_lease(
        self, namespace: str, name: str, version: str, spec: dict[str, Any], timeout: float
    ) -> str | None:
        """Replaces the Lease's spec if it is still at `version`; the new resourceVersion, or
        None when it changed since (409: another replica wrote it)."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": version},
            "spec": spec,
        }
        return self._lease_write(
            self.coordination.replace_namespaced_lease, timeout, name, namespace, body
        )

    def _lease_write(self, call: Callable[..., Any], timeout: float, *args: Any) -> str | None:
        try:
            response = self._request(
                call,
                (min(self.timeout[0], timeout), timeout),
                *args,
                field_manager=FIELD_MANAGER,
                _preload_content=False,
            )
        except ApiException as error:
            if error.status == 409:
                return None
            raise
        version: str = _json(response)["metadata"]["resourceVersion"]
        return version

    def kueue_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Kueue's Workload of a pod group (Kueue names it after the group). None where there is
        none or it may not be read: its message is a courtesy to the user, never a dependency."""
        try:
            return cast(
                dict[str, Any],
                self._read(
                    self.custom.get_namespaced_custom_object,
                    KUEUE_GROUP,
                    KUEUE_VERSION,
                    namespace,
                    "workloads",
                    name,
                ),
            )
        except ApiException as error:
            if error.status in (403, 404):
                return None
            raise

    # -- the job -----------------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body = cast(
                dict[str, Any],
                self._read(
                    self.custom.get_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                ),
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return body

    def write_status(
        self, namespace: str, name: str, resource_version: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource, guarded by the resourceVersion we planned from."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            updated = cast(
                dict[str, Any],
                self._write(
                    self.custom.patch_namespaced_custom_object_status,
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    body,
                    _content_type=MERGE_PATCH,
                ),
            )
        except ApiException as error:
            if error.status == 404:
                raise GoneError(f"{namespace}/{name}") from error
            if error.status == 409:
                raise ConflictError(f"{namespace}/{name}: {error.reason}") from error
            raise
        return updated

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self._write(
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                propagation_policy="Background",
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def emit_event(self, job: dict[str, Any], event: Event, instance: str) -> None:
        meta = job["metadata"]
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                generate_name=f"{meta['name']}.", namespace=meta["namespace"]
            ),
            involved_object=client.V1ObjectReference(
                api_version=job["apiVersion"],
                kind=job["kind"],
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta["uid"],
                resource_version=meta.get("resourceVersion"),
            ),
            type=event.type,
            reason=event.reason,
            message=event.message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=REPORTING_COMPONENT),
            reporting_component=REPORTING_COMPONENT,
            reporting_instance=instance,
        )
        try:
            self._write_discarding(self.core.create_namespaced_event, meta["namespace"], body)
        except (ApiException, OSError, urllib3.exceptions.HTTPError) as error:
            # Events narrate; failing to post one must not fail the reconcile.
            log.warning("could not post event %s: %s", event.reason, error)


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data
