"""The dev StorageClass and its provisioner: every claim of the class gets a hostPath
PersistentVolume under .devcluster/volumes/, which the real PV controller then binds.
All nodes are this one machine, so a volume is reachable from every node and
ReadWriteMany works. Released volumes are deleted, directory included (reclaim Delete)."""

from __future__ import annotations

import functools
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from llmjob_devcluster import kube
from llmjob_devcluster.layout import Layout

log = logging.getLogger("llmjob_devcluster.provisioner")

STORAGE_CLASS = "dev"
PROVISIONER = "llmjob.dev/hostpath"


def ensure_storage_class(api: client.ApiClient) -> None:
    storage = client.StorageV1Api(api)
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        # Immediate: a volume is usable from every node here, so nothing waits for scheduling.
        "volumeBindingMode": "Immediate",
    }
    try:
        storage.create_storage_class(
            kube.model(client.V1StorageClass, body), _request_timeout=kube.REQUEST_TIMEOUT
        )
    except client.ApiException as error:
        if not kube.is_status(error, 409):
            raise


def volume_for(claim: dict[str, Any], path: Path) -> dict[str, Any]:
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


def provision(core: client.CoreV1Api, layout: Layout, claim: dict[str, Any]) -> None:
    """Creates the volume of a pending claim of the dev class (409: it exists already)."""
    if (
        claim["spec"].get("storageClassName") != STORAGE_CLASS
        or claim["spec"].get("volumeName")
        or (claim.get("status") or {}).get("phase") != "Pending"
    ):
        return
    path = layout.volumes_dir / f"pvc-{claim['metadata']['uid']}"
    path.mkdir(parents=True, exist_ok=True)
    # Writable by whatever uid a pod runs as; fsGroup ownership is applied at mount.
    path.chmod(0o777)
    try:
        core.create_persistent_volume(
            kube.model(client.V1PersistentVolume, volume_for(claim, path)),
            _request_timeout=kube.REQUEST_TIMEOUT,
        )
        log.info(
            "provisioned %s for %s/%s",
            path.name,
            claim["metadata"]["namespace"],
            claim["metadata"]["name"],
        )
    except client.ApiException as error:
        if not kube.is_status(error, 409):
            raise


def reclaim(core: client.CoreV1Api, layout: Layout, volume: dict[str, Any]) -> None:
    """Deletes a released volume of ours, directory included (404: it is gone already)."""
    annotations = volume["metadata"].get("annotations") or {}
    if annotations.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
        return
    released = (volume.get("status") or {}).get("phase") == "Released"
    if not released or volume["spec"].get("persistentVolumeReclaimPolicy") != "Delete":
        return
    path = Path(volume["spec"]["hostPath"]["path"])
    if path.parent == layout.volumes_dir:
        shutil.rmtree(path, ignore_errors=True)
    try:
        core.delete_persistent_volume(
            volume["metadata"]["name"], _request_timeout=kube.REQUEST_TIMEOUT
        )
    except client.ApiException as error:
        if not kube.is_status(error, 404):
            raise


def run(api: client.ApiClient, layout: Layout, stopping: threading.Event) -> None:
    """Provisions pending claims and reclaims released volumes as their watch events come
    (every relist goes over all of them again), until `stopping` is set."""
    layout.volumes_dir.mkdir(parents=True, exist_ok=True)
    core = client.CoreV1Api(api)
    threads = [
        threading.Thread(
            target=_watch,
            args=(api, what, list_function, functools.partial(handle, core, layout), stopping),
            name=what,
            daemon=True,
        )
        for what, list_function, handle in (
            ("claim watch", core.list_persistent_volume_claim_for_all_namespaces, provision),
            ("volume watch", core.list_persistent_volume, reclaim),
        )
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _watch(
    api: client.ApiClient,
    what: str,
    list_function: Callable[..., Any],
    handle: Callable[[kube.Obj], None],
    stopping: threading.Event,
) -> None:
    def each(bodies: list[kube.Obj]) -> None:
        for body in bodies:
            handle(body)

    def changed(event_type: str, body: kube.Obj) -> None:
        if event_type != "DELETED":
            handle(body)

    kube.watch_forever(
        list_function, api, what=what, on_list=each, on_event=changed, stopping=stopping
    )
