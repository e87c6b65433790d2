"""Kueue's queueing objects for a test (kueue.x-k8s.io/v1beta2): a ResourceFlavor and a
ClusterQueue of the test's own (cluster-scoped, named after its namespace) and a LocalQueue in
its namespace; and reads of the Workloads Kueue makes."""

from typing import Any, cast

from kubernetes import client

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
Obj = dict[str, Any]


class Queues:
    """The test's queue: `create` once; `delete` removes the cluster-scoped objects."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        # Cluster-scoped names: the namespace's name is unique to the test.
        self.cluster_queue = namespace
        self.flavor = namespace
        self.local_queue = "queue"

    def create(
        self, quota: dict[str, str], preemption: Obj | None = None, flavor: Obj | None = None
    ) -> str:
        """A ClusterQueue with `quota` (resource -> nominal quota) in one flavor (whose spec is
        `flavor`: nodeLabels, nodeTaints, tolerations), serving only this namespace, and the
        LocalQueue that points at it; returns the LocalQueue's name."""
        self.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            "resourceflavors",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor",
             "metadata": {"name": self.flavor}, "spec": flavor or {}},
        )  # fmt: skip
        spec: Obj = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
            "resourceGroups": [
                {
                    "coveredResources": sorted(quota),
                    "flavors": [
                        {
                            "name": self.flavor,
                            "resources": [
                                {"name": name, "nominalQuota": value}
                                for name, value in sorted(quota.items())
                            ],
                        }
                    ],
                }
            ],
        }
        if preemption is not None:
            spec["preemption"] = preemption
        self.custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            "clusterqueues",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterQueue",
             "metadata": {"name": self.cluster_queue}, "spec": spec},
        )  # fmt: skip
        self.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            "localqueues",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalQueue",
             "metadata": {"name": self.local_queue},
             "spec": {"clusterQueue": self.cluster_queue}},
        )  # fmt: skip
        return self.local_queue

    def workload(self, name: str) -> Obj | None:
        try:
            workload = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "workloads", name
            )
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return cast(Obj, workload)

    def workload_condition(self, name: str, type_: str) -> Obj | None:
        workload = self.workload(name)
        conditions = ((workload or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), None)

    def describe(self) -> str:
        """The namespace's Workloads and their conditions, for a failed test's output."""
        listed = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "workloads"
        )
        lines = []
        for workload in cast(Obj, listed)["items"]:
            lines.append(f"workload {workload['metadata']['name']}:")
            for c in (workload.get("status") or {}).get("conditions") or []:
                lines.append(f"  {c['type']}={c['status']} {c.get('reason')}: {c.get('message')}")
        return "\n".join(lines)

    def delete(self) -> None:
        """Deletes the namespace's Workloads (Kueue then stops their pods and lets them go: a
        pod group it still waits to see replaced would otherwise hold the namespace's deletion)
        and the cluster-scoped objects, which Kueue keeps until nothing is admitted under them."""
        self.custom.delete_collection_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "workloads"
        )
        for plural, name in (
            ("clusterqueues", self.cluster_queue),
            ("resourceflavors", self.flavor),
        ):
            try:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)
            except client.ApiException as error:
                if error.status != 404:
                    raise
