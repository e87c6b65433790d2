"""Pods run from the images `make images` built: each container in its image's root
filesystem with the image's entrypoint, user and environment merged with the pod's, a
read-only root when asked, `kubectl logs` as before; an image that was not built waits in
ErrImagePull/ImagePullBackOff with the kubelet's events. And the chart's operator runs from
its image as uid 65532 under a read-only root."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_devcluster.images import index_path, load_index, resolve
from tests.conftest import read_pod, wait_for
from tests.e2e.pod_processes import operator_processes
from tests.integration.helm_chart import Helm, installed, operator_pod, operator_values

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"
OPERATOR_IMAGE = f"ghcr.io/llmjob/operator:{VERSION}"
TRAINER_IMAGE = f"ghcr.io/llmjob/trainer:{VERSION}-cpu"
# What a container reports about the root it runs in, as one JSON line.
INSPECT = f"""
import json, os, sys
try:
    open("/written-by-the-container", "w").close()
    root_writable = True
except OSError:
    root_writable = False
print(json.dumps({{
    "uid": os.getuid(), "gid": os.getgid(), "home": os.environ.get("HOME"),
    "path": os.environ["PATH"], "cwd": os.getcwd(), "python": sys.executable,
    "debian": open("/etc/debian_version").read().strip(),
    "sees_host_checkout": os.path.exists({str(REPO)!r}),
    "root_writable": root_writable,
    "hostname": open("/etc/hostname").read().strip(),
    "scratch_writable": os.access("/scratch", os.W_OK),
}}))
"""


@pytest.fixture(scope="module")
def built() -> None:
    index = load_index(index_path())
    missing = [name for name in (OPERATOR_IMAGE, TRAINER_IMAGE) if resolve(name, index) is None]
    assert not missing, f"not built: {missing}; run `make images`"


def pod(name: str, image: str, **container: object) -> kube.Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, **container}],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }


def run_to_completion(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str, manifest: kube.Obj
) -> kube.Obj:
    core.create_namespaced_pod(namespace, kube.model(client.V1Pod, manifest))
    name = manifest["metadata"]["name"]

    def finished() -> kube.Obj | None:
        found = read_pod(api_client, core, name, namespace)
        phase = (found or {}).get("status", {}).get("phase")
        return found if phase in ("Succeeded", "Failed") else None

    return wait_for(finished, 180, f"pod {name} to finish")


def kubectl_logs(kubectl: list[str], namespace: str, name: str) -> str:
    return subprocess.run(
        [*kubectl, "logs", "-n", namespace, name], check=True, capture_output=True, text=True
    ).stdout


def test_a_container_runs_in_its_images_root_as_its_user_with_a_read_only_root(
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    kubectl: list[str],
    built: None,
) -> None:
    manifest = pod(
        "operator-image",
        OPERATOR_IMAGE,
        command=["python3", "-c", INSPECT],
        securityContext={"runAsNonRoot": True, "readOnlyRootFilesystem": True},
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    finished = run_to_completion(api_client, core, namespace, manifest)
    assert finished["status"]["phase"] == "Succeeded", finished["status"]
    report = json.loads(kubectl_logs(kubectl, namespace, "operator-image").strip())
    # The image's USER (65532:65532), PATH (its venv first) and root; not the host's.
    assert (report["uid"], report["gid"]) == (65532, 65532)
    assert report["home"] == "/nonexistent"
    assert report["path"].startswith("/opt/llmjob/bin:")
    assert report["python"] == "/opt/llmjob/bin/python3"  # the venv of the image
    assert report["debian"].startswith("12.")
    assert not report["sees_host_checkout"]
    assert not report["root_writable"] and report["scratch_writable"]
    assert report["hostname"] == "operator-image"
    status = finished["status"]["containerStatuses"][0]
    assert status["imageID"].startswith("sha256:")


def test_the_trainer_image_runs_its_entrypoint_as_uid_1000_with_the_cpu_comm_op_built_in(
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    kubectl: list[str],
    built: None,
) -> None:
    # `args` only: the image's ENTRYPOINT (tini -- llmjob-launch) stays, as in Kubernetes.
    finished = run_to_completion(
        api_client, core, namespace, pod("launch-help", TRAINER_IMAGE, args=["--help"])
    )
    assert finished["status"]["phase"] == "Succeeded", finished["status"]
    assert "--hostfile" in kubectl_logs(kubectl, namespace, "launch-help")
    # numactl: DeepSpeed's --bind_cores_to_rank (LLMJOB_BIND_CORES=1) runs each rank under it.
    probe = (
        "import os, shutil, deepspeed.git_version_info as v;"
        "print(os.getuid(), os.getgid(), os.getcwd(), bool(v.installed_ops['deepspeed_shm_comm']),"
        " shutil.which('numactl') is not None)"
    )
    finished = run_to_completion(
        api_client,
        core,
        namespace,
        pod("trainer-user", TRAINER_IMAGE, command=["python", "-c", probe]),
    )
    assert finished["status"]["phase"] == "Succeeded", finished["status"]
    assert kubectl_logs(kubectl, namespace, "trainer-user").split() == [
        "1000",
        "1000",
        "/home/llmjob",
        "True",
        "True",
    ]


def test_a_containers_termination_message_is_its_file_or_under_fallback_its_logs_tail(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str, built: None
) -> None:
    """The kubelet's termination messages: the file at terminationMessagePath, written by a
    non-root user under a read-only root, ends up in state.terminated.message; with
    FallbackToLogsOnError a failed container that wrote none gets its log's tail."""
    write_then_fail = (
        "import sys; open('/dev/termination-log', 'w').write('{\"lastCheckpointStep\": 40}');"
        " sys.exit(143)"
    )
    wrote = pod(
        "message-file",
        TRAINER_IMAGE,
        command=["python3", "-c", write_then_fail],
        securityContext={"runAsUser": 1000, "readOnlyRootFilesystem": True},
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    logged = pod(
        "message-logs",
        TRAINER_IMAGE,
        command=["python3", "-c", "print('first'); print('the last words'); raise SystemExit(3)"],
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    silent = pod("message-none", TRAINER_IMAGE, command=["python3", "-c", "raise SystemExit(3)"])
    messages = {}
    for manifest in (wrote, logged, silent):
        finished = run_to_completion(api_client, core, namespace, manifest)
        terminated = finished["status"]["containerStatuses"][0]["state"]["terminated"]
        messages[manifest["metadata"]["name"]] = (terminated["exitCode"], terminated.get("message"))
    assert messages["message-file"] == (143, '{"lastCheckpointStep": 40}')
    assert messages["message-logs"] == (3, "first\nthe last words\n")
    assert messages["message-none"] == (3, None)


def test_an_image_that_was_not_built_waits_with_a_pull_error_and_events(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    image = f"ghcr.io/llmjob/not-built:{uuid.uuid4().hex[:6]}"
    manifest = pod("unpullable", image, command=["true"])
    manifest["spec"]["restartPolicy"] = "Always"
    core.create_namespaced_pod(namespace, kube.model(client.V1Pod, manifest))

    def waiting_reason(reason: str) -> kube.Obj | None:
        found = read_pod(api_client, core, "unpullable", namespace) or {}
        statuses = found.get("status", {}).get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting") or {}
        return waiting if waiting.get("reason") == reason else None

    first = wait_for(lambda: waiting_reason("ErrImagePull"), 60, "ErrImagePull")
    assert image in first["message"]
    wait_for(lambda: waiting_reason("ImagePullBackOff"), 60, "ImagePullBackOff")
    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=unpullable"
    ).items
    failed = [e for e in events if e.reason == "Failed" and e.type == "Warning"]
    assert failed and image in failed[0].message
    assert failed[0].involved_object.field_path == "spec.containers{main}"
    assert any(e.reason == "BackOff" for e in events)
    pod_now = read_pod(api_client, core, "unpullable", namespace)
    assert pod_now is not None and pod_now["status"]["phase"] == "Pending"


def test_the_charts_operator_runs_from_its_image_as_65532_under_a_read_only_root(
    api_client: client.ApiClient,
    helm: Helm,
    restricted_namespaces: Callable[[str], str],
    crd_installed: None,
    built: None,
) -> None:
    release_ns = restricted_namespaces("llmjob-image")
    with installed(helm, "imaged", release_ns, operator_values()):
        operator = operator_pod(api_client, release_ns, "imaged")
        assert operator.spec.containers[0].image == OPERATOR_IMAGE
        (pid,) = operator_processes(operator.metadata.name)
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == ["65532"] * 4
        # Its root is the image's (the operator's venv, no torch, not the host's checkout).
        root = Path(f"/proc/{pid}/root")
        assert (root / "opt/llmjob/bin/llmjob-operator").exists()
        assert not list((root / "opt/llmjob/lib").glob("python3*/site-packages/torch"))
        assert not (root / str(REPO).lstrip("/")).exists()
        # ... and it is mounted read-only in the operator's mount namespace.
        mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        root_mount = next(line.split() for line in mounts if line.split()[4] == "/")
        assert "ro" in root_mount[5].split(",")
