"""Invalid specs are rejected with a message that names the offending field."""

from typing import Any

import pytest
from pydantic import ValidationError

from llmjob_operator.api import LLMTrainingJob, LLMTrainingJobSpec
from tests.unit.specs import minimal_spec


def _training(**fields: Any) -> dict[str, Any]:
    return {"seqLen": 128, "precision": "fp32", **fields}


# (case id, top-level overrides, text the error must contain)
INVALID_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("zero workers", {"workers": 0}, "workers"),
    ("negative gpus", {"gpusPerWorker": -1}, "gpusPerWorker"),
    ("procs with gpus", {"gpusPerWorker": 8, "procsPerWorker": 2}, "procsPerWorker"),
    ("zero procs", {"procsPerWorker": 0}, "procsPerWorker"),
    ("no model source", {"model": {}}, "model.preset"),
    ("two model sources", {"model": {"preset": "tiny", "path": "/m"}}, "model.preset"),
    ("unknown preset", {"model": {"preset": "gpt5"}}, "preset"),
    ("missing data path", {"data": {}}, "path"),
    ("bad token dtype", {"data": {"path": "/d", "dtype": "int8"}}, "dtype"),
    ("zero max steps", {"training": _training(maxSteps=0)}, "maxSteps"),
    ("seq too long for tiny", {"training": _training(seqLen=4096)}, "training.seqLen"),
    ("zero micro batch", {"training": _training(microBatchSize=0)}, "microBatchSize"),
    (
        "global batch mismatch",
        {"training": _training(microBatchSize=4, globalBatchSize=10)},
        "training.globalBatchSize",
    ),
    ("zero learning rate", {"training": _training(learningRate=0)}, "learningRate"),
    (
        "min lr above lr",
        {"training": _training(learningRate=1e-4, minLearningRate=1e-3)},
        "training.minLearningRate",
    ),
    ("warmup past end", {"training": _training(maxSteps=10, warmupSteps=20)}, "warmupSteps"),
    ("bad precision", {"training": _training(precision="fp8")}, "precision"),
    ("zero stage 4", {"training": _training(zeroStage=4)}, "zeroStage"),
    ("unknown training key", {"training": _training(learningRat=1e-3)}, "learningRat"),
    (
        "deepspeed contradicts micro batch",
        {"deepspeed": {"train_micro_batch_size_per_gpu": 16}},
        "training.microBatchSize",
    ),
    (
        "deepspeed contradicts zero stage",
        {"deepspeed": {"zero_optimization": {"stage": 3}}},
        "deepspeed.zero_optimization.stage",
    ),
    ("deepspeed optimizer", {"deepspeed": {"optimizer": {"type": "Adam"}}}, "deepspeed.optimizer"),
    ("no checkpoint storage", {"checkpoint": {}}, "checkpoint.claimName"),
    ("both claim and size", {"checkpoint": {"claimName": "c", "size": "1Gi"}}, "checkpoint.size"),
    ("bad size quantity", {"checkpoint": {"size": "lots"}}, "size"),
    (
        "storage class with claim",
        {"checkpoint": {"claimName": "c", "storageClassName": "fast"}},
        "checkpoint.storageClassName",
    ),
    ("keep none", {"checkpoint": {"size": "1Gi", "keepLast": 0}}, "keepLast"),
    ("relative mount path", {"checkpoint": {"size": "1Gi", "mountPath": "ckpt"}}, "mountPath"),
    (
        "backoff order",
        {"failurePolicy": {"backoffSeconds": 60, "maxBackoffSeconds": 10}},
        "failurePolicy.maxBackoffSeconds",
    ),
    ("negative restarts", {"failurePolicy": {"maxRestarts": -1}}, "maxRestarts"),
    (
        "rule without matcher",
        {"failurePolicy": {"rules": [{"action": "FailJob"}]}},
        "onExitCodes",
    ),
    (
        "rule with bad action",
        {"failurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": ["X"]}]}},
        "action",
    ),
    (
        "exit code out of range",
        {
            "failurePolicy": {
                "rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [300]}}]
            }
        },
        "values",
    ),
    (
        "fail on scheduling timeout without timeout",
        {"failurePolicy": {"failOnSchedulingTimeout": True}},
        "schedulingTimeoutSeconds",
    ),
    (
        "shrink floor above the gang",
        {"failurePolicy": {"onNodeLoss": {"shrinkAfterSeconds": 60, "minWorkers": 3}}},
        "failurePolicy.onNodeLoss.minWorkers",
    ),
    (
        "shrink without a wait",
        {"failurePolicy": {"onNodeLoss": {"shrinkAfterSeconds": 0, "minWorkers": 1}}},
        "shrinkAfterSeconds",
    ),
    ("zero deadline", {"runPolicy": {"activeDeadlineSeconds": 0}}, "activeDeadlineSeconds"),
    ("bad clean policy", {"runPolicy": {"cleanPodPolicy": "Some"}}, "cleanPodPolicy"),
    ("gpu in resources", {"resources": {"limits": {"nvidia.com/gpu": 1}}}, "gpusPerWorker"),
    (
        "reserved volume name",
        {"volumes": [{"name": "checkpoints", "emptyDir": {}}]},
        "volumes",
    ),
    (
        "mount of unknown volume",
        {"volumeMounts": [{"name": "nope", "mountPath": "/x"}]},
        "volumeMounts[0].name",
    ),
    (
        "mount over operator path",
        {
            "volumes": [{"name": "d", "emptyDir": {}}],
            "volumeMounts": [{"name": "d", "mountPath": "/etc/llmjob"}],
        },
        "volumeMounts[0].mountPath",
    ),
    ("reserved env", {"env": [{"name": "LLMJOB_ATTEMPT", "value": "9"}]}, "env"),
    ("args without command", {"args": ["--x"]}, "command"),
    ("metrics port privileged", {"metricsPort": 80}, "metricsPort"),
    ("unknown top-level key", {"worker": 2}, "worker"),
]


@pytest.mark.parametrize(
    ("overrides", "names"), [c[1:] for c in INVALID_SPECS], ids=[c[0] for c in INVALID_SPECS]
)
def test_invalid_spec_is_rejected_naming_the_field(overrides: dict[str, Any], names: str) -> None:
    with pytest.raises(ValidationError) as caught:
        LLMTrainingJobSpec.model_validate(minimal_spec(**overrides))
    assert names in str(caught.value)


def test_the_table_is_large_enough() -> None:
    assert len(INVALID_SPECS) >= 25


def test_minimal_spec_is_valid_and_defaults_fill_in() -> None:
    spec = LLMTrainingJobSpec.model_validate(minimal_spec())
    assert spec.world_size == 2
    assert spec.checkpoint.mount_path == "/checkpoints"
    assert spec.failure_policy.max_restarts == 3
    assert spec.run_policy.suspend is False


def test_cpu_worker_defaults_to_one_process() -> None:
    spec = LLMTrainingJobSpec.model_validate(minimal_spec(workers=3))
    assert spec.slots_per_worker == 1
    assert spec.world_size == 3


def test_global_batch_hint_names_the_accumulation_that_fits() -> None:
    with pytest.raises(ValidationError) as caught:
        LLMTrainingJobSpec.model_validate(
            minimal_spec(training=_training(microBatchSize=4, globalBatchSize=32))
        )
    assert "set training.gradientAccumulationSteps to 4" in str(caught.value)


def test_a_whole_job_locates_errors_under_spec() -> None:
    document = {
        "apiVersion": "training.llmjob.dev/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": "x"},
        "spec": minimal_spec(workers=0),
    }
    with pytest.raises(ValidationError) as caught:
        LLMTrainingJob.model_validate(document)
    (error,) = caught.value.errors()
    assert error["loc"] == ("spec", "workers")
