"""The pod knobs a GPU platform needs (spec.pod, resources.gpuResourceName and extended,
scheduling.topology): each is validated naming the field, and rendered into every worker."""

from typing import Any

import pytest
from pydantic import ValidationError

from llmjob_operator.api import (
    LLMTrainingJobSpec,
    PassthroughPolicy,
    admission_verdict,
    explain_validation_error,
    validate_job,
)
from llmjob_operator.crd import custom_resource_definition
from llmjob_operator.render import (
    ATTEMPT_LABEL,
    JOB_NAME_LABEL,
    POD_INPUTS_HASH_ANNOTATION,
    WORKER_INDEX_LABEL,
    JobRef,
    RenderSettings,
    render,
)
from llmjob_operator.settings import parse_settings
from tests.unit.specs import minimal_spec

JOB = JobRef(name="llama", namespace="team-a", uid="u-1")
SETTINGS = RenderSettings(default_image="default/trainer:1")
IPC_LOCK_ALLOWED = PassthroughPolicy(allow_ipc_lock=True)


def document(**overrides: Any) -> dict[str, Any]:
    return {
        "apiVersion": "training.llmjob.dev/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": "llama"},
        "spec": minimal_spec(**overrides),
    }


def rendered(
    attempt: int = 1, policy: PassthroughPolicy = IPC_LOCK_ALLOWED, **overrides: Any
) -> Any:
    return render(JOB, validate_job(document(**overrides), policy).spec, SETTINGS, attempt)


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return only


# (case, overrides, the field path the message must start with, text it must contain)
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("our label", {"pod": {"labels": {JOB_NAME_LABEL: "other"}}}, "spec.pod.labels",
     "training.llmjob.dev keys are the operator's own"),
    ("a label under our domain", {"pod": {"labels": {"x.training.llmjob.dev/y": "1"}}},
     "spec.pod.labels", "operator's own"),
    ("managed-by", {"pod": {"labels": {"app.kubernetes.io/managed-by": "me"}}},
     "spec.pod.labels", "set by the operator"),
    ("queue by hand", {"pod": {"labels": {"kueue.x-k8s.io/queue-name": "q"}}},
     "spec.pod.labels", "label the LLMTrainingJob itself"),
    ("group annotation", {"pod": {"annotations": {"scheduling.k8s.io/group-name": "g"}}},
     "spec.pod.annotations", "set by the operator"),
    ("our annotation", {"pod": {"annotations": {"training.llmjob.dev/spec-hash": "0"}}},
     "spec.pod.annotations", "operator's own"),
    ("two slashes", {"pod": {"labels": {"a/b/c": "1"}}}, "spec.pod.labels", "at most one '/'"),
    ("bad prefix", {"pod": {"labels": {"Bad_Prefix/x": "1"}}}, "spec.pod.labels", "prefix"),
    ("label value", {"pod": {"labels": {"team": "has space"}}}, "spec.pod.labels",
     "label value"),
    ("long label value", {"pod": {"labels": {"team": "a" * 64}}}, "spec.pod.labels", "63"),
    ("annotation key", {"pod": {"annotations": {"-x": "1"}}}, "spec.pod.annotations", "name"),
    ("annotations too big", {"pod": {"annotations": {"big": "x" * (256 * 1024)}}},
     "spec.pod.annotations", "at most 262144"),
    ("SYS_ADMIN", {"pod": {"addCapabilities": ["SYS_ADMIN"]}}, "spec.pod.addCapabilities",
     "only IPC_LOCK"),
    ("CAP_ prefix", {"pod": {"addCapabilities": ["CAP_IPC_LOCK"]}}, "spec.pod.addCapabilities",
     "only IPC_LOCK"),
    ("twice", {"pod": {"addCapabilities": ["IPC_LOCK", "IPC_LOCK"]}},
     "spec.pod.addCapabilities", "twice"),
    ("service account", {"pod": {"serviceAccountName": "Trainer_SA"}},
     "spec.pod.serviceAccountName", "not a ServiceAccount name"),
    ("pull secret name", {"pod": {"imagePullSecrets": [{"name": "UPPER"}]}},
     "spec.pod.imagePullSecrets", "not a Secret name"),
    ("pull secret twice", {"pod": {"imagePullSecrets": [{"name": "r"}, {"name": "r"}]}},
     "spec.pod.imagePullSecrets", "unique"),
    ("pull secret as a string", {"pod": {"imagePullSecrets": ["r"]}},
     "spec.pod.imagePullSecrets.0", "valid dictionary"),
    ("gpu name without a domain", {"resources": {"gpuResourceName": "gpu"}},
     "spec.resources", "resources.gpuResourceName 'gpu': an extended resource is domain/name"),
    ("gpu name of kubernetes", {"resources": {"gpuResourceName": "kubernetes.io/gpu"}},
     "spec.resources", "kubernetes.io names"),
    ("gpu name with an empty name", {"resources": {"gpuResourceName": "nvidia.com/"}},
     "spec.resources", "resources.gpuResourceName"),
    ("extended without a domain", {"resources": {"extended": {"rdma": 1}}},
     "spec.resources", "resources.extended['rdma']"),
    ("extended zero", {"resources": {"extended": {"rdma/ib": 0}}}, "spec.resources",
     "at least 1"),
    ("extended fraction", {"resources": {"extended": {"rdma/ib": 0.5}}},
     "spec.resources.extended.rdma/ib", "integer"),
    ("extended names the gpu", {"resources": {"extended": {"nvidia.com/gpu": 1}}},
     "spec.resources", "gpusPerWorker"),
    ("amd gpu in limits", {"resources": {"gpuResourceName": "amd.com/gpu",
                                         "limits": {"amd.com/gpu": 1}}},
     "spec.resources", "gpusPerWorker"),
    ("extended request without its limit", {"resources": {"requests": {"rdma/ib": 1}}},
     "spec.resources", "resources.requests['rdma/ib']: an extended resource needs a limit"),
    ("extended twice", {"resources": {"extended": {"rdma/ib": 1}, "limits": {"rdma/ib": 1}}},
     "spec.resources", "already in resources.extended"),
    ("unknown native resource", {"resources": {"requests": {"gpu": 1}}}, "spec.resources",
     "not cpu, memory"),
    ("topology key", {"scheduling": {"topology": {"key": "a/b/c"}}},
     "spec.scheduling.topology.key", "not a node label key"),
    ("topology mode", {"scheduling": {"topology": {"key": "zone", "mode": "Sometimes"}}},
     "spec.scheduling.topology.mode", "Required"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "path", "text"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_knob_is_rejected_naming_the_field(
    overrides: dict[str, Any], path: str, text: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_job(document(**overrides), IPC_LOCK_ALLOWED)
    message = explain_validation_error(caught.value)
    assert message.startswith(f"{path}: "), message
    assert text in message, message


def test_ipc_lock_is_refused_unless_the_operator_allows_it() -> None:
    body = document(pod={"addCapabilities": ["IPC_LOCK"]})
    verdict = admission_verdict(body, None, PassthroughPolicy())
    assert verdict is not None
    assert verdict.startswith("spec.pod.addCapabilities: ")
    assert "--allow-ipc-lock" in verdict
    assert admission_verdict(body, None, IPC_LOCK_ALLOWED) is None
    # The other opt-ins do not allow it.
    assert (
        admission_verdict(body, None, PassthroughPolicy(allow_host_path=True, allow_secrets=True))
        is not None
    )


def test_the_ipc_lock_setting_comes_from_a_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse_settings([]).passthrough.allow_ipc_lock is False
    assert parse_settings(["--allow-ipc-lock"]).passthrough == IPC_LOCK_ALLOWED
    monkeypatch.setenv("LLMJOB_ALLOW_IPC_LOCK", "true")
    assert parse_settings([]).passthrough == IPC_LOCK_ALLOWED


@pytest.mark.parametrize(
    "resources",
    [
        {"gpuResourceName": "amd.com/gpu"},
        {"gpuResourceName": "nvidia.com/mig-1g.10gb"},
        {"gpuResourceName": "gpu.intel.com/i915", "extended": {"rdma/ib": 2}},
        # Kubernetes' own rules for an extended resource outside `extended`: limit only, or
        # request equal to limit.
        {"limits": {"rdma/ib": 1}},
        {"requests": {"rdma/ib": "1"}, "limits": {"rdma/ib": 1}},
        {"requests": {"hugepages-2Mi": "1Gi", "ephemeral-storage": "10Gi"}},
    ],
)
def test_accelerators_and_device_resources_are_accepted(resources: dict[str, Any]) -> None:
    LLMTrainingJobSpec.model_validate(minimal_spec(gpusPerWorker=1, resources=resources))


def test_the_gpu_resource_name_and_extended_resources_are_requested_equal_to_limits() -> None:
    pod = rendered(
        gpusPerWorker=2,
        resources={
            "gpuResourceName": "nvidia.com/mig-1g.10gb",
            "extended": {"rdma/ib": 1},
            "requests": {"cpu": 8},
        },
    ).pods[0]
    resources = container(pod)["resources"]
    assert resources["requests"] == {"cpu": "8", "rdma/ib": "1", "nvidia.com/mig-1g.10gb": "2"}
    assert resources["limits"] == {"rdma/ib": "1", "nvidia.com/mig-1g.10gb": "2"}
    amd = container(rendered(gpusPerWorker=8, resources={"gpuResourceName": "amd.com/gpu"}).pods[0])
    assert amd["resources"] == {
        "requests": {"amd.com/gpu": "8"},
        "limits": {"amd.com/gpu": "8"},
    }
    # A CPU job names no accelerator, but still gets its devices.
    cpu = container(rendered(resources={"extended": {"rdma/ib": 1}}).pods[0])
    assert cpu["resources"] == {"requests": {"rdma/ib": "1"}, "limits": {"rdma/ib": "1"}}


def test_labels_and_annotations_reach_every_worker_and_ours_stay() -> None:
    desired = rendered(
        workers=3,
        attempt=2,
        pod={
            "labels": {"team": "nlp", "example.com/cost-center": "42"},
            "annotations": {"k8s.v1.cni.cncf.io/networks": "rdma-net,rdma-net2"},
        },
    )
    for index, pod in enumerate(desired.pods):
        meta = pod["metadata"]
        assert meta["labels"]["team"] == "nlp"
        assert meta["labels"]["example.com/cost-center"] == "42"
        assert meta["labels"][JOB_NAME_LABEL] == "llama"
        assert meta["labels"][WORKER_INDEX_LABEL] == str(index)
        assert meta["labels"][ATTEMPT_LABEL] == "2"
        assert meta["annotations"]["k8s.v1.cni.cncf.io/networks"] == "rdma-net,rdma-net2"
    # They are the workers' own: the Service, ConfigMap and claim are not labelled.
    for other in (desired.service, desired.config_map, desired.claim):
        assert "team" not in other["metadata"]["labels"]
        assert "annotations" not in other["metadata"]


def test_changed_annotations_are_a_changed_pod_spec() -> None:
    """An edit of spec.pod.annotations (a network attachment) starts a new attempt, as any
    other edit of what shapes the pods does."""
    plain = rendered().pods[0]
    first = rendered(pod={"annotations": {"k8s.v1.cni.cncf.io/networks": "a"}}).pods[0]
    second = rendered(pod={"annotations": {"k8s.v1.cni.cncf.io/networks": "b"}}).pods[0]
    hashes = {
        p["metadata"]["annotations"][POD_INPUTS_HASH_ANNOTATION] for p in (plain, first, second)
    }
    assert len(hashes) == 3


def test_service_account_and_pull_secrets_without_the_api_token() -> None:
    pod = rendered(
        pod={"serviceAccountName": "trainer", "imagePullSecrets": [{"name": "a"}, {"name": "b"}]}
    ).pods[0]
    assert pod["spec"]["serviceAccountName"] == "trainer"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "a"}, {"name": "b"}]
    assert pod["spec"]["automountServiceAccountToken"] is False
    default = rendered().pods[0]
    assert "serviceAccountName" not in default["spec"]
    assert "imagePullSecrets" not in default["spec"]


def test_ipc_lock_is_the_one_change_to_the_security_context() -> None:
    plain = rendered().pods[0]
    rdma = rendered(pod={"addCapabilities": ["IPC_LOCK"]}).pods[0]
    assert container(rdma)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]},
    }
    assert rdma["spec"]["securityContext"] == plain["spec"]["securityContext"]
    without = {**container(rdma)["securityContext"], "capabilities": {"drop": ["ALL"]}}
    assert without == container(plain)["securityContext"]


def _affinity(attempt: int = 1, **scheduling: Any) -> Any:
    return rendered(attempt=attempt, scheduling=scheduling).pods[0]["spec"].get("affinity")


def test_a_topology_key_keeps_the_attempt_in_one_domain() -> None:
    required = _affinity(attempt=4, topology={"key": "topology.kubernetes.io/zone"})
    assert required == {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {JOB_NAME_LABEL: "llama", ATTEMPT_LABEL: "4"}},
                    "topologyKey": "topology.kubernetes.io/zone",
                }
            ]
        }
    }
    preferred = _affinity(topology={"key": "example.com/rack", "mode": "Preferred"})
    (weighted,) = preferred["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert weighted["weight"] == 100
    assert weighted["podAffinityTerm"]["topologyKey"] == "example.com/rack"
    assert _affinity() is None


def test_the_users_own_pod_affinity_wins_and_node_affinity_is_kept() -> None:
    theirs = {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "rack"}
            ]
        }
    }
    assert _affinity(affinity=theirs, topology={"key": "zone"}) == theirs
    node = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                ]
            }
        }
    }
    merged = _affinity(affinity=node, topology={"key": "zone"})
    assert merged["nodeAffinity"] == node["nodeAffinity"]
    (term,) = merged["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "zone"


# -- scheduling.gang: the gang schedulers' PodGroups --------------------------------------


def test_coscheduling_renders_a_pod_group_the_workers_are_labelled_for() -> None:
    desired = rendered(workers=3, scheduling={"gang": "Coscheduling"})
    assert desired.pod_group == {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1",
        "kind": "PodGroup",
        "metadata": {
            "name": "llama",
            "namespace": "team-a",
            "labels": desired.service["metadata"]["labels"],
            "ownerReferences": desired.service["metadata"]["ownerReferences"],
        },
        "spec": {"minMember": 3},
    }
    # Applied before the pods, which the scheduler holds back until their group exists.
    kinds = [obj["kind"] for obj in desired.all]
    assert kinds.index("PodGroup") < kinds.index("Pod")
    for pod in desired.pods:
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "llama"
        assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"


def test_volcano_renders_its_pod_group_annotation_and_scheduler() -> None:
    desired = rendered(
        scheduling={"gang": "Volcano", "priorityClassName": "high"},
        pod={"annotations": {"k8s.v1.cni.cncf.io/networks": "rdma-net"}},
    )
    assert desired.pod_group is not None
    assert desired.pod_group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert desired.pod_group["spec"] == {"minMember": 2, "priorityClassName": "high"}
    for pod in desired.pods:
        annotations = pod["metadata"]["annotations"]
        assert annotations["k8s.v1.cni.cncf.io/networks"] == "rdma-net"
        assert annotations["scheduling.k8s.io/group-name"] == "llama"
        assert pod["spec"]["schedulerName"] == "volcano"
        assert "scheduling.x-k8s.io/pod-group" not in pod["metadata"]["labels"]


def test_a_scheduler_name_of_ones_own_runs_the_gang_and_none_means_no_group() -> None:
    own = rendered(scheduling={"gang": "Coscheduling", "schedulerName": "gpu-scheduler"})
    assert {pod["spec"]["schedulerName"] for pod in own.pods} == {"gpu-scheduler"}
    plain = rendered()
    assert plain.pod_group is None
    assert "PodGroup" not in [obj["kind"] for obj in plain.all]
    assert "schedulerName" not in plain.pods[0]["spec"]


def test_an_unknown_gang_scheduler_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_job(document(scheduling={"gang": "Yunikorn"}), PassthroughPolicy())
    assert explain_validation_error(caught.value).startswith("spec.scheduling.gang: ")


def test_the_crd_injects_none_of_the_knobs_into_jobs_that_do_not_use_them() -> None:
    """A default in the schema is written into every job the API server returns, old ones too:
    an operator a release older would see fields it does not know and fail every job while an
    upgrade applies the CRD first. So the knobs have none."""
    schema = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    assert "default" not in spec["pod"]
    assert "default" not in spec["resources"]["properties"]["gpuResourceName"]
    assert "default" not in spec["resources"]["properties"]["extended"]
    for name in ("topology", "gang"):
        assert "default" not in spec["scheduling"]["properties"][name]
