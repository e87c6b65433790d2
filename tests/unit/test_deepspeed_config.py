"""The generated DeepSpeed config: fp32 reduction under bf16, ZeRO-3 buckets, the allow list."""

import json
import re
from typing import Any

import pytest

from llmjob_operator.api import LLMTrainingJobSpec
from llmjob_operator.render import DEEPSPEED_CONFIG_KEY, JobRef, RenderSettings, render
from llmjob_trainer.config import (
    TrainConfig,
    deepspeed_config,
    optimizer_offloaded,
    without_batch_shape,
)
from tests.unit.specs import minimal_spec


def generated(user: dict[str, Any] | None = None, **training: Any) -> dict[str, Any]:
    return deepspeed_config(TrainConfig(**training), world_size=4, user=user)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bf16_accumulates_and_reduces_gradients_in_fp32_by_default(stage: int) -> None:
    ds = generated(precision="bf16", zero_stage=stage)
    assert ds["bf16"] == {"enabled": True}
    assert ds["communication_data_type"] == "fp32"
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}


def test_bf16_without_zero_reduces_in_fp32_and_accumulates_in_the_model_dtype() -> None:
    # DeepSpeed outside ZeRO accepts only grad_accum_dtype == the model dtype.
    ds = generated(precision="bf16", zero_stage=0)
    assert ds["communication_data_type"] == "fp32"
    assert "data_types" not in ds


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_other_precisions_keep_deepspeeds_defaults(precision: str) -> None:
    ds = generated(precision=precision, zero_stage=2)
    assert "communication_data_type" not in ds and "data_types" not in ds


def test_the_fp32_defaults_are_overridable() -> None:
    ds = generated(
        {"communication_data_type": "bf16", "data_types": {"grad_accum_dtype": "bf16"}},
        precision="bf16",
        zero_stage=2,
    )
    assert ds["communication_data_type"] == "bf16"
    assert ds["data_types"] == {"grad_accum_dtype": "bf16"}


def test_zero3_buckets_follow_the_models_width_unless_the_user_sets_them() -> None:
    zero3 = TrainConfig(zero_stage=3)
    ds = deepspeed_config(zero3, 4, hidden_size=768)
    assert ds["zero_optimization"] == {
        "stage": 3,
        "reduce_bucket_size": 589_824,  # 768^2
        "stage3_prefetch_bucket_size": 530_841,  # 0.9 x 768^2, rounded down
        "stage3_param_persistence_threshold": 7_680,  # 10 x 768
        "sub_group_size": 5_898_240,  # 10 x 768^2
    }
    user = {"zero_optimization": {"reduce_bucket_size": 5e8, "overlap_comm": True}}
    ds = deepspeed_config(zero3, 4, user, hidden_size=2048)
    assert ds["zero_optimization"] == {
        "stage": 3,
        "reduce_bucket_size": 5e8,
        "overlap_comm": True,
        "stage3_prefetch_bucket_size": 3_774_873,
        "stage3_param_persistence_threshold": 20_480,
        "sub_group_size": 41_943_040,
    }
    # Without a width (the operator's rendering) or below ZeRO-3: DeepSpeed's defaults.
    assert deepspeed_config(zero3, 4)["zero_optimization"] == {"stage": 3}
    for stage in (0, 1, 2):
        ds = deepspeed_config(TrainConfig(zero_stage=stage), 4, hidden_size=768)
        assert ds["zero_optimization"] == {"stage": stage}


def test_allowed_keys_merge_over_the_generated_ones() -> None:
    ds = generated({"zero_optimization": {"overlap_comm": True}, "steps_per_print": 5})
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert ds["steps_per_print"] == 5
    assert ds["train_batch_size"] == 4 * 1 * 4


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"optimizer": {"type": "Adam"}}, "deepspeed.optimizer is not allowed: the trainer builds"),
        ({"scheduler": {"type": "WarmupLR"}}, "deepspeed.scheduler is not allowed"),
        ({"checkpoint": {"writer": {"type": "decoupled"}}}, "deepspeed.checkpoint is not allowed"),
        ({"tensor_parallel": {"autotp_size": 2}}, "deepspeed.tensor_parallel is not allowed"),
        ({"sequence_parallel_size": 2}, "deepspeed.sequence_parallel_size is not allowed"),
        ({"elasticity": {"enabled": True}}, "deepspeed.elasticity is not allowed"),
        ({"activation_checkpointing": {}}, "deepspeed.activation_checkpointing is not supported"),
        (
            {"zero_optimization": {"zero_hpz_partition_size": 8}},
            "deepspeed.zero_optimization.zero_hpz_partition_size is not supported",
        ),
        (
            {"zero_optimization": {"offload_optimizer": {"device": "nvme"}}},
            'deepspeed.zero_optimization.offload_optimizer.device="nvme" is not supported',
        ),
        (
            {"zero_optimization": {"offload_param": {"device": "cpu"}}},
            "deepspeed.zero_optimization.offload_param is not allowed at training.zeroStage 2",
        ),
        ({"zero_optimization": 3}, "deepspeed.zero_optimization must be an object"),
        (
            {"train_micro_batch_size_per_gpu": 16},
            "contradicts training.microBatchSize",
        ),
    ],
)
def test_keys_the_trainer_does_not_understand_are_rejected_by_name(
    user: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        generated(user)


def test_optimizer_offload_is_supported_and_detected() -> None:
    user = {"zero_optimization": {"offload_optimizer": {"device": "cpu", "pin_memory": True}}}
    ds = generated(user, zero_stage=2)
    assert optimizer_offloaded(ds)
    assert not optimizer_offloaded(generated(zero_stage=2))
    param_offload = {"zero_optimization": {"offload_param": {"device": "cpu"}}}
    assert generated(param_offload, zero_stage=3)["zero_optimization"]["offload_param"] == {
        "device": "cpu"
    }


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (3, 2)])
def test_a_resized_gangs_rendered_config_merges_with_the_trainers_kept_global_batch(
    before: int, after: int
) -> None:
    """What the trainer does on an elastic resume (train.py): the checkpoint's global batch
    through another gradient accumulation, merged with the ConfigMap the operator rendered
    for the edited spec."""
    batch = {"microBatchSize": 1, "gradientAccumulationSteps": 6 // before}
    training = {"seqLen": 128, "precision": "fp32", **batch}
    old = LLMTrainingJobSpec.model_validate(minimal_spec(workers=before, training=training))
    new = LLMTrainingJobSpec.model_validate(minimal_spec(workers=after, training=training))
    rendered = render(JobRef("j", "ns", "u"), new, RenderSettings(default_image="i"), 2)
    user = json.loads(rendered.config_map["data"][DEEPSPEED_CONFIG_KEY])
    global_batch = old.training.samples_per_step(old.world_size)
    kept = new.training.model_copy(
        update={"gradient_accumulation_steps": global_batch // new.world_size}
    )
    # Kept whole, the rendered keys contradict the kept batch (exit 2 on every resize).
    with pytest.raises(ValueError, match=r"contradicts training\.gradientAccumulationSteps"):
        deepspeed_config(kept, new.world_size, user)
    merged = deepspeed_config(kept, new.world_size, without_batch_shape(user))
    assert merged["train_batch_size"] == global_batch
    assert merged["gradient_accumulation_steps"] == global_batch // new.world_size
    assert merged["zero_optimization"] == user["zero_optimization"]
