"""`cluster.expire_watches`: after it, a watch resumed from any resourceVersion handed out
before it gets 410 Gone, so operator tests can show what a relist does (no ghosts)."""

from __future__ import annotations

import pytest
from kubernetes import client, watch

from llmjob_devcluster import cluster, kube
from llmjob_devcluster.layout import Layout

pytestmark = pytest.mark.integration


def watch_from(core: client.CoreV1Api, namespace: str, resource_version: str) -> list[str]:
    """The names in the events a watch from `resource_version` gets within 3 s."""
    stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
        core.list_namespaced_config_map,
        namespace,
        resource_version=resource_version,
        timeout_seconds=3,
    )
    return [event["raw_object"]["metadata"]["name"] for event in stream]


def config_map(name: str) -> client.V1ConfigMap:
    return kube.model(client.V1ConfigMap, {"metadata": {"name": name}, "data": {"k": "v"}})


def listing(api_client: client.ApiClient, core: client.CoreV1Api, namespace: str) -> kube.Obj:
    return kube.as_dict(api_client, core.list_namespaced_config_map(namespace))


def test_a_watch_resumed_from_before_expire_watches_gets_410_gone(
    devcluster: Layout, api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    start = listing(api_client, core, namespace)["metadata"]["resourceVersion"]
    created = core.create_namespaced_config_map(namespace, config_map("before"))
    newest = kube.as_dict(api_client, created)["metadata"]["resourceVersion"]
    # Without expiry, resuming from an older version replays what came after it.
    assert "before" in watch_from(core, namespace, start)

    cluster.expire_watches(devcluster)

    for resource_version in (start, newest):
        with pytest.raises(client.ApiException) as gone:
            watch_from(core, namespace, resource_version)
        assert gone.value.status == 410, gone.value
    # etcd is compacted past them too: a read at an exact old version is refused as well.
    with pytest.raises(client.ApiException) as compacted:
        core.list_namespaced_config_map(
            namespace, resource_version=start, resource_version_match="Exact"
        )
    assert compacted.value.status == 410, compacted.value
    # A relist gives a version that watches again.
    relisted = listing(api_client, core, namespace)
    assert "before" in [item["metadata"]["name"] for item in relisted["items"]]
    core.create_namespaced_config_map(namespace, config_map("after"))
    assert watch_from(core, namespace, relisted["metadata"]["resourceVersion"]) == ["after"]
