"""The only module that talks to the Kubernetes API server."""

import json
import logging
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from llmjob_operator.api import GROUP, PLURAL, VERSION
from llmjob_operator.reconcile import Event
from llmjob_operator.render import JOB_NAME_LABEL

FIELD_MANAGER = "llmjob-operator"
REPORTING_COMPONENT = "llmjob-operator"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"

log = logging.getLogger(__name__)


class ConflictError(Exception):
    """The job changed since it was read: re-observe and plan again."""


def load_config() -> None:
    """In a pod: the service account; elsewhere: KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    # -- owned objects -----------------------------------------------------------------

    def apply(self, body: dict[str, Any]) -> None:
        """Server-side apply under our one field manager; pods are created, never patched."""
        kind = body["kind"]
        namespace = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        if kind == "Pod":
            self._create_pod(namespace, body)
            return
        patch = {
            "Service": self.core.patch_namespaced_service,
            "ConfigMap": self.core.patch_namespaced_config_map,
            "PersistentVolumeClaim": self.core.patch_namespaced_persistent_volume_claim,
        }[kind]
        patch(
            name,
            namespace,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
        )

    def _create_pod(self, namespace: str, body: dict[str, Any]) -> None:
        # A pod's spec is immutable: a worker that exists is the one to keep.
        try:
            self.core.create_namespaced_pod(namespace, cast(Any, body), field_manager=FIELD_MANAGER)
        except ApiException as error:
            if error.status != 409:
                raise

    def delete_pod(self, namespace: str, name: str, force: bool = False) -> None:
        try:
            self.core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=0 if force else None
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def pod_exists(self, namespace: str, name: str) -> bool:
        try:
            self.core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def list_worker_pods(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every pod of every job (one LIST at start-up, to seed the watch cache)."""
        if namespace is None:
            response = self.core.list_pod_for_all_namespaces(
                label_selector=JOB_NAME_LABEL, _preload_content=False
            )
        else:
            response = self.core.list_namespaced_pod(
                namespace, label_selector=JOB_NAME_LABEL, _preload_content=False
            )
        items: list[dict[str, Any]] = _json(response).get("items", [])
        return items

    def list_owned(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """Service, ConfigMap and claim of one job, as raw bodies."""
        selector = f"{JOB_NAME_LABEL}={job_name}"
        found: list[dict[str, Any]] = []
        for lister, kind in (
            (self.core.list_namespaced_service, "Service"),
            (self.core.list_namespaced_config_map, "ConfigMap"),
            (self.core.list_namespaced_persistent_volume_claim, "PersistentVolumeClaim"),
        ):
            items = _json(lister(namespace, label_selector=selector, _preload_content=False))
            found += [{**item, "kind": kind} for item in items.get("items", [])]
        return found

    # -- the job -----------------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body = cast(
                dict[str, Any],
                self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
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
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE_PATCH
                ),
            )
        except ApiException as error:
            if error.status in (404, 409):
                raise ConflictError(f"{namespace}/{name}: {error.reason}") from error
            raise
        return updated

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
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
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as error:
            # Events narrate; failing to post one must not fail the reconcile.
            log.warning("could not post event %s: %s", event.reason, error.reason)


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data
