"""tests/apiserver_requests.py reads what kube-apiserver itself counted: the numbers rise by
exactly the requests made, and the pinned kubectl reads the same ones."""

from __future__ import annotations

import subprocess

import pytest
from kubernetes import client

from llmjob_devcluster import audit, kube
from llmjob_devcluster.layout import Layout
from tests import apiserver_requests
from tests.apiserver_requests import Request
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

CREATES = 7


def test_creating_config_maps_counts_exactly_those_creates(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    # The controller manager publishes kube-root-ca.crt into every new namespace: that
    # create must land before the window, not in it.
    wait_for(
        lambda: any(
            item["metadata"]["name"] == "kube-root-ca.crt"
            for item in kube.as_dict(api_client, core.list_namespaced_config_map(namespace))[
                "items"
            ]
        ),
        30,
        "kube-root-ca.crt in the new namespace",
    )
    before = apiserver_requests.snapshot(api_client)
    for index in range(CREATES):
        core.create_namespaced_config_map(
            namespace, kube.model(client.V1ConfigMap, {"metadata": {"name": f"counted-{index}"}})
        )
    core.read_namespaced_config_map("counted-0", namespace)
    delta = apiserver_requests.since(api_client, before)

    assert apiserver_requests.count(delta, verbs={"POST"}, resource="configmaps") == CREATES
    assert delta[Request("POST", "", "configmaps", "", "201")] == CREATES
    assert apiserver_requests.count(delta, verbs={"GET"}, resource="configmaps") == 1
    assert apiserver_requests.count(delta, verbs={"DELETE"}, resource="configmaps") == 0


def test_kubectl_and_the_client_read_the_same_counts(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str, kubectl: list[str]
) -> None:
    core.create_namespaced_config_map(
        namespace, kube.model(client.V1ConfigMap, {"metadata": {"name": "seen-by-both"}})
    )
    creates = Request("POST", "", "configmaps", "", "201")
    by_client = apiserver_requests.snapshot(api_client)[creates]
    metrics = subprocess.run(
        [*kubectl, "get", "--raw", "/metrics"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    by_kubectl = apiserver_requests.parse(metrics)[creates]
    assert by_client == by_kubectl >= 1
    assert apiserver_requests.snapshot(api_client)[creates] == by_client


def test_the_audit_log_names_each_write_its_user_and_namespace(
    devcluster: Layout, core: client.CoreV1Api, namespace: str
) -> None:
    start = audit.mark(devcluster)
    core.create_namespaced_config_map(
        namespace, kube.model(client.V1ConfigMap, {"metadata": {"name": "audited"}})
    )
    core.read_namespaced_config_map("audited", namespace)
    core.delete_namespaced_config_map("audited", namespace)

    ours = [w for w in audit.writes_since(start) if w.namespace == namespace]
    assert [(w.verb, w.resource, w.name, w.code) for w in ours] == [
        ("create", "configmaps", "audited", 201),
        ("delete", "configmaps", "audited", 200),
    ]  # the read is not a write: not logged
    assert {w.user for w in ours} == {"kubernetes-admin"}
