"""The cache's relist (kube.list_kind) against the real API server: read in pages, each
slimmed as it arrives, and nothing lost or repeated across the pages' continue tokens."""

from typing import Any

import pytest
from kubernetes import client

from llmjob_operator.kube import ClientLimits, Kube
from llmjob_operator.render import JOB_NAME_LABEL

pytestmark = pytest.mark.integration


def config_map(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {JOB_NAME_LABEL: "paged"}},
        "data": {"hostfile": "x" * 1000},
    }


def test_a_relist_in_pages_returns_every_object_once_slimmed_at_one_version(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    names = {f"paged-{i}" for i in range(7)}
    for name in sorted(names):
        core.create_namespaced_config_map(namespace, config_map(name))
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "unlabelled"}, "data": {"a": "b"}}
    )
    kube = Kube(ClientLimits(), api_client)

    paged, version = kube.list_kind("ConfigMap", namespace, page_size=2)
    whole, _ = kube.list_kind("ConfigMap", namespace)

    assert sorted(b["metadata"]["name"] for b in paged) == sorted(names)
    assert paged == whole
    # Slimmed as the cache keeps them: a ConfigMap's data and managedFields are not read.
    assert all(set(b) == {"kind", "metadata"} for b in paged)
    assert all("managedFields" not in b["metadata"] for b in paged)
    newest = max(int(b["metadata"]["resourceVersion"]) for b in paged)
    assert version is not None and version >= newest
