"""The API server's own machinery: RBAC, CRD schemas, garbage collection."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_devcluster.layout import REPO_ROOT, Layout
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def run(
    kubectl: list[str], *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*kubectl, *args], input=stdin, capture_output=True, text=True, check=check, timeout=120
    )


CRD = REPO_ROOT / "crds" / "llmtrainingjobs.training.llmjob.dev.yaml"
EXAMPLE = REPO_ROOT / "examples" / "cpu-demo.yaml"


def token_client(devcluster: Layout, token: str) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = devcluster.apiserver_url
    configuration.ssl_ca_cert = str(devcluster.pki_dir / "ca.crt")
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return client.CoreV1Api(client.ApiClient(configuration))


def test_rbac_forbids_a_service_account_without_a_role_and_allows_it_with_one(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str, devcluster: Layout
) -> None:
    core.create_namespaced_service_account(
        namespace, kube.model(client.V1ServiceAccount, {"metadata": {"name": "robot"}})
    )
    request = kube.model(client.AuthenticationV1TokenRequest, {"spec": {"expirationSeconds": 600}})
    token = kube.as_dict(
        api_client, core.create_namespaced_service_account_token("robot", namespace, request)
    )
    robot = token_client(devcluster, token["status"]["token"])

    with pytest.raises(client.ApiException) as denied:
        robot.list_namespaced_pod(namespace)
    assert denied.value.status == 403

    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(
        namespace,
        kube.model(
            client.V1Role,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            },
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        kube.model(
            client.V1RoleBinding,
            {
                "metadata": {"name": "robot-reads-pods"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}],
            },
        ),
    )

    def allowed() -> bool:
        try:
            robot.list_namespaced_pod(namespace)
        except client.ApiException as error:
            assert error.status == 403
            return False
        return True

    wait_for(allowed, 15, "the RoleBinding to take effect")
    with pytest.raises(client.ApiException) as still_denied:
        robot.list_namespaced_secret(namespace)
    assert still_denied.value.status == 403


def example_job(namespace: str) -> dict[str, object]:
    documents = yaml.safe_load_all(EXAMPLE.read_text())
    job: dict[str, object] = next(d for d in documents if d and d["kind"] == "LLMTrainingJob")
    metadata = job["metadata"]
    assert isinstance(metadata, dict)
    metadata["namespace"] = namespace
    return job


def test_crd_applies_explains_its_fields_and_rejects_an_invalid_job(
    kubectl: list[str], namespace: str
) -> None:
    run(kubectl, "apply", "-f", str(CRD.parent))
    run(
        kubectl,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/llmtrainingjobs.training.llmjob.dev",
    )

    explained = wait_for(
        lambda: run(kubectl, "explain", "llmtrainingjob.spec", check=False).stdout,
        30,
        "kubectl explain",
    )
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    workers = schema["properties"]["spec"]["properties"]["workers"]["description"]
    assert " ".join(workers.split()) in " ".join(explained.split())
    assert "workers" in explained

    valid = example_job(namespace)
    run(kubectl, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(valid))

    invalid = example_job(namespace)
    spec = invalid["spec"]
    assert isinstance(spec, dict)
    spec["workers"] = 0
    rejected = run(kubectl, "apply", "-f", "-", stdin=yaml.safe_dump(invalid), check=False)
    assert rejected.returncode != 0
    assert "spec.workers" in rejected.stderr


def test_deleting_an_owner_garbage_collects_what_it_owns(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    owner = kube.as_dict(
        api_client,
        core.create_namespaced_config_map(
            namespace, kube.model(client.V1ConfigMap, {"metadata": {"name": "owner"}})
        ),
    )
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_secret(
        namespace,
        kube.model(
            client.V1Secret,
            {
                "metadata": {"name": "owned", "ownerReferences": [reference]},
                "stringData": {"k": "v"},
            },
        ),
    )
    core.create_namespaced_config_map(
        namespace, kube.model(client.V1ConfigMap, {"metadata": {"name": "unrelated"}})
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def collected() -> bool:
        try:
            core.read_namespaced_secret("owned", namespace)
        except client.ApiException as error:
            return bool(error.status == 404)
        return False

    wait_for(collected, 30, "the garbage collector to delete the owned secret")
    core.read_namespaced_config_map("unrelated", namespace)
