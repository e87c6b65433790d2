"""What a worker pod must look like, beyond the golden files: the contracts of DESIGN §3."""

import json
from typing import Any

from llmjob_operator.api import OPERATOR_ENV, LLMTrainingJobSpec
from llmjob_operator.render import (
    ATTEMPT_LABEL,
    JOB_NAME_LABEL,
    WORKER_INDEX_LABEL,
    JobRef,
    RenderSettings,
    render,
)
from tests.unit.specs import minimal_spec

JOB = JobRef(name="llama", namespace="team-a", uid="u-1")
SETTINGS = RenderSettings(default_image="default/trainer:1")


def rendered(attempt: int = 1, **overrides: Any) -> Any:
    return render(
        JOB, LLMTrainingJobSpec.model_validate(minimal_spec(**overrides)), SETTINGS, attempt
    )


def test_every_object_is_owned_by_the_job_as_controller() -> None:
    desired = rendered(checkpoint={"size": "1Gi", "reclaimPolicy": "Delete"})
    for obj in desired.all:
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "training.llmjob.dev/v1alpha1",
            "kind": "LLMTrainingJob",
            "name": "llama",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_retained_checkpoint_claim_is_not_owned_so_deleting_the_job_keeps_it() -> None:
    claim = rendered().claim
    assert claim is not None
    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["labels"][JOB_NAME_LABEL] == "llama"


def test_existing_claim_is_mounted_and_none_is_created() -> None:
    desired = rendered(checkpoint={"claimName": "shared-ckpt", "mountPath": "/ckpt"})
    assert desired.claim is None
    pod = desired.pods[0]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "checkpoints")
    assert volume["persistentVolumeClaim"] == {"claimName": "shared-ckpt"}
    train = json.loads(desired.config_map["data"]["train.json"])
    assert train["checkpoint"]["dir"] == "/ckpt/llama"


def test_async_save_reaches_the_trainers_config_and_defaults_on() -> None:
    def async_save(desired: Any) -> Any:
        return json.loads(desired.config_map["data"]["train.json"])["checkpoint"]["asyncSave"]

    assert async_save(rendered()) is True
    blocking = rendered(checkpoint={"size": "1Gi", "asyncSave": False})
    assert async_save(blocking) is False
    # A changed checkpoint mode is a changed configuration: the pods' hash moves with it.
    assert blocking.pods[0] != rendered().pods[0]


def test_pods_have_stable_names_hostnames_and_attempt_labels() -> None:
    desired = rendered(attempt=3, workers=3)
    for index, pod in enumerate(desired.pods):
        assert pod["metadata"]["name"] == f"llama-worker-{index}"
        assert pod["spec"]["hostname"] == f"llama-worker-{index}"
        assert pod["spec"]["subdomain"] == "llama"
        labels = pod["metadata"]["labels"]
        assert labels[WORKER_INDEX_LABEL] == str(index)
        assert labels[ATTEMPT_LABEL] == "3"
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["LLMJOB_ATTEMPT"] == "3"
        assert env["LLMJOB_WORKER_INDEX"] == str(index)


def test_launcher_runs_as_node_rank_with_worker_zero_as_master() -> None:
    desired = rendered(workers=2)
    for index, pod in enumerate(desired.pods):
        container = pod["spec"]["containers"][0]
        # No `command`: the image's ENTRYPOINT (tini -- llmjob-launch) is what runs, so tini is
        # the container's first process.
        assert "command" not in container
        assert f"--node-rank={index}" in container["args"]
        assert "--master-addr=llama-worker-0.llama.team-a.svc" in container["args"]
        assert "--hostfile=/etc/llmjob/hostfile" in container["args"]


def test_user_command_runs_under_the_launcher_contract() -> None:
    container = rendered(command=["python", "my_train.py"], args=["--lr", "1e-4"]).pods[0]["spec"][
        "containers"
    ][0]
    assert "command" not in container
    assert container["args"][-5:] == ["--", "python", "my_train.py", "--lr", "1e-4"]
    assert "readinessProbe" not in container


def test_gpu_requests_equal_limits_and_cpu_jobs_request_none() -> None:
    gpu = rendered(gpusPerWorker=4, resources={"requests": {"cpu": 8}}).pods[0]
    resources = gpu["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "8", "nvidia.com/gpu": "4"}
    assert resources["limits"] == {"nvidia.com/gpu": "4"}
    cpu = rendered().pods[0]
    assert "resources" not in cpu["spec"]["containers"][0]


def test_restricted_pod_security_with_writable_scratch() -> None:
    pod = rendered().pods[0]
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = spec["containers"][0]["securityContext"]
    assert container == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/cache", "/dev/shm", "/etc/llmjob", "/checkpoints"} <= mounts
    assert spec["automountServiceAccountToken"] is False


def test_grace_period_covers_the_checkpoint_save() -> None:
    pod = rendered(checkpoint={"size": "1Gi", "saveTimeoutSeconds": 120}).pods[0]
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 120


def test_scheduling_and_user_passthrough_reach_the_pod() -> None:
    pod = rendered(
        scheduling={
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "priorityClassName": "high",
            "schedulerName": "volcano",
        },
        volumes=[{"name": "data", "emptyDir": {}}],
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
        env=[{"name": "NCCL_DEBUG", "value": "INFO"}],
    ).pods[0]
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert spec["priorityClassName"] == "high"
    assert spec["schedulerName"] == "volcano"
    assert {"name": "data", "emptyDir": {}} in spec["volumes"]
    container = spec["containers"][0]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in container["env"]


def test_headless_service_publishes_not_ready_workers() -> None:
    service = rendered().service
    assert service["metadata"]["name"] == "llama"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {JOB_NAME_LABEL: "llama"}


def test_deepspeed_config_merges_user_keys_over_generated_ones() -> None:
    desired = rendered(
        training={"seqLen": 64, "microBatchSize": 2, "gradientAccumulationSteps": 3},
        deepspeed={"zero_optimization": {"overlap_comm": True}, "steps_per_print": 5},
    )
    ds = json.loads(desired.config_map["data"]["ds_config.json"])
    assert ds["train_batch_size"] == 2 * 3 * 2
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert ds["steps_per_print"] == 5


def test_the_env_the_operator_sets_is_exactly_what_the_api_reserves() -> None:
    container = rendered().pods[0]["spec"]["containers"][0]
    ours = {e["name"] for e in container["env"] if e["name"].startswith("LLMJOB_")}
    assert ours == OPERATOR_ENV
