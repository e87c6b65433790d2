"""How the local cluster turns Kueue's own manifests into those of a manager on the host."""

from typing import Any

from llmjob_devcluster.kueue import MANAGED_NAMESPACE_LABEL, manifests


def webhook(name: str, group: str, resource: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {"service": {"name": "kueue-webhook-service", "path": path}},
        "rules": [{"apiGroups": [group], "resources": [resource], "operations": ["CREATE"]}],
        "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name"}]},
    }


KUEUE = [
    {"kind": "Namespace", "metadata": {"name": "kueue-system"}},
    {"kind": "Deployment", "metadata": {"name": "kueue-controller-manager"}},
    {"kind": "Service", "metadata": {"name": "kueue-webhook-service"}},
    {"kind": "Secret", "metadata": {"name": "kueue-webhook-server-cert"}},
    {"kind": "APIService", "metadata": {"name": "v1beta2.visibility.kueue.x-k8s.io"}},
    {"kind": "ClusterRole", "metadata": {"name": "kueue-manager-role"}},
    {
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "workloads.kueue.x-k8s.io"},
        "spec": {
            "conversion": {
                "strategy": "Webhook",
                "webhook": {"clientConfig": {"service": {"name": "svc", "path": "/convert"}}},
            }
        },
    },
    {
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "kueue-mutating-webhook-configuration"},
        "webhooks": [
            webhook("mpod.kb.io", "", "pods", "/mutate--v1-pod"),
            webhook("mjob.kb.io", "batch", "jobs", "/mutate-batch-v1-job"),
            webhook("mworkload.kb.io", "kueue.x-k8s.io", "workloads", "/mutate-workload"),
        ],
    },
]


def test_the_manager_on_the_host_replaces_the_in_cluster_deployment() -> None:
    kinds = [obj["kind"] for obj in manifests(KUEUE, 9443, "Q0E=")]
    assert kinds == [
        "Namespace",
        "ClusterRole",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
    ]


def test_webhooks_and_conversion_are_called_on_loopback_with_the_clusters_ca() -> None:
    out = manifests(KUEUE, 9443, "Q0E=")
    crd = next(o for o in out if o["kind"] == "CustomResourceDefinition")
    assert crd["spec"]["conversion"]["webhook"]["clientConfig"] == {
        "url": "https://127.0.0.1:9443/convert",
        "caBundle": "Q0E=",
    }
    hooks = next(o for o in out if o["kind"] == "MutatingWebhookConfiguration")["webhooks"]
    # The batch/job integration is not enabled: its webhook would fail every Job's creation.
    assert [h["name"] for h in hooks] == ["mpod.kb.io", "mworkload.kb.io"]
    assert hooks[0]["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate--v1-pod",
        "caBundle": "Q0E=",
    }
    # Pods are Kueue's only in namespaces that opt in; Kueue's own objects everywhere.
    assert hooks[0]["namespaceSelector"] == {"matchLabels": {MANAGED_NAMESPACE_LABEL: "true"}}
    assert hooks[1]["namespaceSelector"] == KUEUE[-1]["webhooks"][2]["namespaceSelector"]
