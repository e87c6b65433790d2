"""scheduling.gang against the gang schedulers' own CRDs (vendored under crds/, see its
README): the rendered coscheduling and Volcano PodGroups and their pods are accepted by the API
server in a server-side dry run, and the operator creates the job's PodGroup before its pods.
No gang scheduler runs here: the workers stay Pending for a scheduler that is not there."""

import subprocess
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from llmjob_operator.api import PassthroughPolicy, validate_job
from llmjob_operator.render import JOB_NAME_LABEL, JobRef, RenderSettings, render
from tests.conftest import wait_for
from tests.integration.jobs import Jobs, standin_job

pytestmark = pytest.mark.integration

CRDS = Path(__file__).parent / "crds"
GROUPS = {
    "Coscheduling": ("scheduling.x-k8s.io", "v1alpha1"),
    "Volcano": ("scheduling.volcano.sh", "v1beta1"),
}


@pytest.fixture(scope="module")
def gang_crds(kubectl: list[str]) -> None:
    files = [str(path) for path in sorted(CRDS.glob("*.yaml"))]
    assert len(files) == 2
    for path in files:
        subprocess.run([*kubectl, "apply", "--server-side", "-f", path], check=True)
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "-f", path, "--timeout=60s"],
            check=True,
        )


def _dry_run(api_client: client.ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    namespace = body["metadata"]["namespace"]
    if body["kind"] == "Pod":
        core = client.CoreV1Api(api_client)
        pod: dict[str, Any] = api_client.sanitize_for_serialization(
            core.create_namespaced_pod(namespace, body, dry_run="All", field_validation="Strict")
        )
        return pod
    group, version = body["apiVersion"].split("/")
    created: dict[str, Any] = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        group, version, namespace, "podgroups", body, dry_run="All", field_validation="Strict"
    )
    return created


@pytest.mark.parametrize("gang", sorted(GROUPS))
def test_the_rendered_pod_group_and_pods_are_accepted_with_the_schedulers_crds(
    api_client: client.ApiClient, gang_crds: None, namespace: str, gang: str
) -> None:
    body = standin_job("gang", "/unused", workers=3, scheduling={"gang": gang})
    job = validate_job(body, PassthroughPolicy())
    desired = render(
        JobRef("gang", namespace, str(uuid.uuid4())), job.spec, RenderSettings("img"), 1
    )
    group = desired.pod_group
    assert group is not None
    for obj in [group, *desired.pods]:
        # The owner does not exist: the dry run must not make garbage of what it would create.
        obj["metadata"].pop("ownerReferences")
    stored = _dry_run(api_client, group)
    assert stored["apiVersion"] == "/".join(GROUPS[gang])
    assert stored["spec"]["minMember"] == 3
    for pod in desired.pods:
        _dry_run(api_client, pod)


def test_the_operator_creates_the_pod_group_before_the_pods(
    api_client: client.ApiClient, gang_crds: None, jobs: Jobs, venv_bin: str
) -> None:
    created = jobs.create(
        standin_job("cosched", venv_bin, workers=2, scheduling={"gang": "Coscheduling"})
    )
    custom = client.CustomObjectsApi(api_client)
    wait_for(lambda: len(jobs.pods("cosched")) == 2, timeout=60, what="both workers")
    group = custom.get_namespaced_custom_object(
        "scheduling.x-k8s.io", "v1alpha1", jobs.namespace, "podgroups", "cosched"
    )
    (owner,) = group["metadata"]["ownerReferences"]
    assert owner["uid"] == created["metadata"]["uid"] and owner["controller"] is True
    assert group["metadata"]["labels"][JOB_NAME_LABEL] == "cosched"
    assert group["spec"]["minMember"] == 2
    made = datetime.fromisoformat(group["metadata"]["creationTimestamp"])
    for pod in jobs.pods("cosched"):
        assert pod.metadata.labels["scheduling.x-k8s.io/pod-group"] == "cosched"
        assert pod.spec.scheduler_name == "scheduler-plugins-scheduler"
        # Created after its group: the group's creation is not later than any pod's.
        assert made <= pod.metadata.creation_timestamp
        assert pod.spec.node_name is None
