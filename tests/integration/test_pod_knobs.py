"""Every pod knob (examples/gpu-rdma.yaml), rendered and created with a server-side dry run by
the real API server: its validation, ServiceAccount and PodSecurity admission accept what the
operator would create, and IPC_LOCK is the one thing the Pod Security Standards object to."""

import copy
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from llmjob_operator.api import GROUP, PLURAL, VERSION, PassthroughPolicy, validate_job
from llmjob_operator.render import JobRef, RenderSettings, render

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpu-rdma.yaml"
SERVICE_ACCOUNT = "trainer"
# What PodSecurity says of the example's pod, and nothing else, at each level.
IPC_LOCK_VIOLATION = (
    'container "trainer" must not include "IPC_LOCK" in securityContext.capabilities.add'
)
VIOLATIONS = {
    "baseline": f"non-default capabilities ({IPC_LOCK_VIOLATION})",
    "restricted": f"unrestricted capabilities ({IPC_LOCK_VIOLATION})",
}


def example(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["spec"] = {**copy.deepcopy(body["spec"]), **spec}
    return body


@pytest.fixture(scope="module")
def namespaces(core: client.CoreV1Api) -> Iterator[dict[str, str]]:
    """One namespace per Pod Security level (privileged: no label), each with the example's
    ServiceAccount (the API server refuses a pod that names a missing one)."""
    suffix = uuid.uuid4().hex[:5]
    made: dict[str, str] = {}
    try:
        for level in ("privileged", "baseline", "restricted"):
            name = f"t-knobs-{level}-{suffix}"
            labels = {"pod-security.kubernetes.io/enforce": level} if level != "privileged" else {}
            core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
            )
            made[level] = name
            core.create_namespaced_service_account(
                name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=SERVICE_ACCOUNT))
            )
        yield made
    finally:
        for name in made.values():
            core.delete_namespace(name)


def _creators(api_client: client.ApiClient) -> dict[str, Callable[..., Any]]:
    core = client.CoreV1Api(api_client)
    return {
        "Pod": core.create_namespaced_pod,
        "Service": core.create_namespaced_service,
        "ConfigMap": core.create_namespaced_config_map,
        "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim,
    }


def dry_run(api_client: client.ApiClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, object or Status) of a server-side dry-run create with strict field validation:
    an unknown or misspelt field is an error, not silently dropped."""
    create = _creators(api_client)[body["kind"]]
    try:
        response = create(
            body["metadata"]["namespace"],
            body,
            dry_run="All",
            field_validation="Strict",
            _preload_content=False,
        )
    except client.ApiException as error:
        return error.status, json.loads(error.body or "{}")
    return response.status, json.loads(response.data)


def rendered(body: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    job = validate_job(body, PassthroughPolicy(allow_ipc_lock=True))
    ref = JobRef(name=body["metadata"]["name"], namespace=namespace, uid=str(uuid.uuid4()))
    desired = render(ref, job.spec, RenderSettings(default_image="unused"), attempt=1)
    # The owner does not exist: the dry run must not make garbage of what it would create.
    for obj in desired.all:
        obj["metadata"].pop("ownerReferences", None)
    return desired.all


@pytest.mark.parametrize(
    ("gpu", "topology"),
    [
        ("nvidia.com/gpu", {"key": "example.com/rack"}),
        ("amd.com/gpu", {"key": "topology.kubernetes.io/zone", "mode": "Preferred"}),
        ("nvidia.com/mig-1g.10gb", {"key": "topology.kubernetes.io/zone"}),
    ],
)
def test_every_knob_renders_objects_the_api_server_accepts(
    api_client: client.ApiClient,
    crd_installed: None,
    namespaces: dict[str, str],
    gpu: str,
    topology: dict[str, Any],
) -> None:
    namespace = namespaces["privileged"]
    resources = {**example()["spec"]["resources"], "gpuResourceName": gpu}
    scheduling = {**example()["spec"]["scheduling"], "topology": topology}
    body = example(resources=resources, scheduling=scheduling)
    # The job itself: the CRD's schema knows every knob (strict: none is pruned as unknown).
    custom = client.CustomObjectsApi(api_client)
    stored = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
    )
    assert stored["spec"]["pod"] == body["spec"]["pod"]
    assert stored["spec"]["resources"]["extended"] == {"rdma/ib": 1}
    objects = rendered(body, namespace)
    for obj in objects:
        status, answer = dry_run(api_client, obj)
        assert status == 201, f"{obj['kind']} {obj['metadata']['name']}: {answer.get('message')}"
        assert answer["metadata"]["name"] == obj["metadata"]["name"]
    pods = [o for o in objects if o["kind"] == "Pod"]
    assert len(pods) == 2
    _, pod = dry_run(api_client, pods[1])
    assert pod["metadata"]["labels"]["team"] == "foundation-models"
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "rdma-net"
    assert pod["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-cred"}]
    # The ServiceAccount admission plugin mounted no API token (automount stays off).
    assert not [v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access")]
    (trainer,) = pod["spec"]["containers"]
    assert trainer["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert trainer["resources"]["limits"][gpu] == "8"
    assert trainer["resources"]["requests"]["rdma/ib"] == trainer["resources"]["limits"]["rdma/ib"]
    terms = json.dumps(pod["spec"]["affinity"]["podAffinity"])
    assert topology["key"] in terms


def test_ipc_lock_is_the_only_pod_security_violation(
    api_client: client.ApiClient, namespaces: dict[str, str]
) -> None:
    """With IPC_LOCK allowed, the rest of the baseline (and even restricted) still holds: the
    example is refused at both levels for that capability alone, and admitted without it."""
    without = example(pod={**example()["spec"]["pod"], "addCapabilities": []})
    for level, violation in VIOLATIONS.items():
        namespace = namespaces[level]
        pod = next(o for o in rendered(example(), namespace) if o["kind"] == "Pod")
        status, answer = dry_run(api_client, pod)
        assert status == 403, answer
        message = answer["message"]
        assert message.endswith(f'violates PodSecurity "{level}:latest": {violation}'), message
        plain = next(o for o in rendered(without, namespace) if o["kind"] == "Pod")
        status, answer = dry_run(api_client, plain)
        assert status == 201, f"{level}: {answer.get('message')}"
