"""The trainer's configuration: what `train.json` holds, validated by pydantic.

Imports no torch: the operator embeds these models in the LLMTrainingJob API, so
the operator and the trainer validate exactly the same thing.
"""

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from llmjob_trainer.presets import MODEL_PRESETS

Precision = Literal["bf16", "fp16", "fp32"]
TokenDtype = Literal["uint16", "uint32"]
ResumePolicy = Literal["Auto", "Never"]
LrSchedule = Literal["cosine", "wsd"]
PresetName = Literal["tiny", "gpt2-124m", "llama-1b"]


class ApiModel(BaseModel):
    """Frozen, camelCase on the wire, unknown keys rejected: the base of every API model."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )


def checkpoint_tag(step: int) -> str:
    """The directory name of the checkpoint committed at `step` (the operator reports it)."""
    return f"step_{step:08d}"


class ModelConfig(ApiModel):
    """Which causal language model to train."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.preset) ? 1 : 0) + (has(self.path) ? 1 : 0)"
                    " + (has(self.hubId) ? 1 : 0) == 1",
                    "message": "set exactly one of model.preset, model.path and model.hubId",
                }
            ]
        }
    )

    preset: PresetName | None = Field(
        default=None,
        description="A named architecture built from its config with nothing downloaded "
        "(tiny, gpt2-124m, llama-1b). Exactly one of preset, path and hubId.",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        description="A local Hugging Face model directory (config.json and weights, "
        "optionally a tokenizer) to continue training from.",
    )
    hub_id: str | None = Field(
        default=None,
        min_length=1,
        description="A Hugging Face Hub model id; needs network access from the workers.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides applied to the model's transformers config "
        "(for example n_layer or hidden_size).",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass to save memory."
    )
    compile: bool = Field(default=False, description="Compile the model with torch.compile.")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        sources = [name for name in ("preset", "path", "hub_id") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError(
                "set exactly one of model.preset, model.path and model.hubId "
                f"(got {', '.join(sources) or 'none'})"
            )
        return self

    def max_positions(self) -> int | None:
        """The longest sequence the model accepts, where it is known without loading it."""
        if self.preset is None:
            return None
        preset = MODEL_PRESETS[self.preset]
        for key in ("n_positions", "max_position_embeddings"):
            if key in self.config:
                return int(self.config[key])
        return preset.max_positions


class DataConfig(ApiModel):
    """Where the tokenized training data is (files written by llmjob-prepare)."""

    path: str = Field(min_length=1, description="Token file for training (flat uint16/uint32).")
    validation_path: str | None = Field(
        default=None, min_length=1, description="Token file for validation loss; optional."
    )
    dtype: TokenDtype | None = Field(
        default=None,
        description="Token width; defaults to the dtype in the token file's JSON header.",
    )


class TrainConfig(ApiModel):
    """The optimisation: steps, batch shape, learning-rate schedule, precision and ZeRO."""

    max_steps: int = Field(default=1000, ge=1, description="Optimizer steps to train for.")
    seq_len: int = Field(default=1024, ge=8, le=131072, description="Tokens per sample.")
    micro_batch_size: int = Field(default=4, ge=1, description="Samples per rank per micro-step.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, description="Micro-steps accumulated into one optimizer step."
    )
    global_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Samples per optimizer step across all ranks. When set it must equal "
        "microBatchSize x gradientAccumulationSteps x world size.",
    )
    learning_rate: float = Field(default=3e-4, gt=0, le=1, description="Peak learning rate.")
    warmup_steps: int = Field(default=100, ge=0, description="Linear warmup steps.")
    min_learning_rate: float = Field(
        default=3e-5, ge=0, description="Learning rate at the end of the cosine decay."
    )
    lr_schedule: LrSchedule = Field(
        default="cosine",
        description="cosine: warmup, then cosine decay over the rest of maxSteps (a resume "
        "with another maxSteps is refused). wsd: warmup, constant, then cosine decay over "
        "the last decaySteps (maxSteps may change while the decay has not begun).",
    )
    decay_steps: int = Field(
        default=0, ge=0, description="wsd only: the final steps that decay to minLearningRate."
    )
    weight_decay: float = Field(default=0.1, ge=0, le=1, description="AdamW weight decay.")
    adam_beta1: float = Field(default=0.9, gt=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(default=0.95, gt=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(default=1.0, ge=0, description="Gradient norm clip; 0 disables it.")
    precision: Precision = Field(default="bf16", description="bf16, fp16 or fp32.")
    zero_stage: int = Field(default=2, ge=0, le=3, description="DeepSpeed ZeRO stage, 0 to 3.")
    seed: int = Field(default=1234, ge=0, description="Seed for weights, sampling and dropout.")
    eval_interval_steps: int = Field(
        default=0, ge=0, description="Validation every this many steps; 0 only at the end."
    )
    eval_batches: int = Field(default=8, ge=1, description="Micro-batches per validation.")
    log_interval_steps: int = Field(default=10, ge=1, description="A log line every N steps.")

    @model_validator(mode="after")
    def _schedule_fits(self) -> Self:
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"training.minLearningRate ({self.min_learning_rate}) must not exceed "
                f"training.learningRate ({self.learning_rate})"
            )
        if self.warmup_steps + self.decay_steps > self.max_steps:
            raise ValueError(
                f"training.warmupSteps ({self.warmup_steps}) + decaySteps "
                f"({self.decay_steps}) must not exceed training.maxSteps ({self.max_steps})"
            )
        return self

    def samples_per_step(self, world_size: int) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * world_size

    def check_world_size(self, world_size: int) -> None:
        """Raise if globalBatchSize disagrees with the batch shape at this world size."""
        if self.global_batch_size is None:
            return
        actual = self.samples_per_step(world_size)
        if self.global_batch_size != actual:
            per_rank = self.micro_batch_size * world_size
            hint = (
                f"set training.gradientAccumulationSteps to {self.global_batch_size // per_rank}"
                if self.global_batch_size % per_rank == 0
                else f"use a multiple of microBatchSize x world size ({per_rank})"
            )
            raise ValueError(
                f"training.globalBatchSize ({self.global_batch_size}) != microBatchSize "
                f"({self.micro_batch_size}) x gradientAccumulationSteps "
                f"({self.gradient_accumulation_steps}) x world size ({world_size}) = {actual}; "
                f"{hint}, or drop globalBatchSize"
            )


class CheckpointConfig(ApiModel):
    """Where and how often the trainer commits checkpoints."""

    dir: str = Field(min_length=1, description="Directory holding committed checkpoints.")
    interval_steps: int = Field(default=100, ge=1, description="Commit every N steps.")
    keep_last: int = Field(default=3, ge=1, description="Committed checkpoints to keep.")
    resume: ResumePolicy = Field(
        default="Auto",
        description="Auto resumes from the newest committed checkpoint; Never starts over.",
    )
    export_dir: str | None = Field(
        default=None,
        description="Where the final Hugging Face model is exported; default <dir>/export.",
    )
    async_save: bool = Field(
        default=True,
        description="Write checkpoints in the background while training goes on; the "
        "commit follows once every rank's files are durable. False blocks for the write.",
    )


# Training fields a resume may change. Reporting cadence and run length do not change what a
# step computes (where maxSteps shapes the schedule, the trainer checks it at resume). The
# batch shape is checked as what it means, the global batch (the manifest's samples per
# step, train.py): a new world size comes with the accumulation that keeps it, and with
# globalBatchSize set the API makes that an edit of gradientAccumulationSteps too.
LEGACY_UNHASHED_TRAINING = frozenset(
    {"max_steps", "eval_interval_steps", "eval_batches", "log_interval_steps"}
)
UNHASHED_TRAINING = LEGACY_UNHASHED_TRAINING | {"gradient_accumulation_steps", "global_batch_size"}


class RunConfig(ApiModel):
    """The whole of `train.json`: everything one training run needs besides DeepSpeed's config."""

    job_name: str = Field(default="local", description="Name used in logs and metric labels.")
    model: ModelConfig
    data: DataConfig
    training: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig
    metrics_port: int = Field(default=9400, ge=0, le=65535, description="0 disables /metrics.")

    @model_validator(mode="after")
    def _sequence_fits_model(self) -> Self:
        limit = self.model.max_positions()
        if limit is not None and self.training.seq_len > limit:
            raise ValueError(
                f"training.seqLen ({self.training.seq_len}) exceeds the model's "
                f"{limit} positions; lower seqLen or raise the position count in model.config"
            )
        return self

    def config_hash(self) -> str:
        """Hash of what must not change across a resume (model and optimisation)."""
        return self._hash(UNHASHED_TRAINING)

    def legacy_config_hash(self) -> str:
        """The hash checkpoints were committed under before the batch shape left it (it also
        covers gradientAccumulationSteps and globalBatchSize): they resume with that shape."""
        return self._hash(LEGACY_UNHASHED_TRAINING)

    def _hash(self, unhashed: frozenset[str]) -> str:
        stable = {
            "model": self.model.model_dump(mode="json", by_alias=True),
            "training": self.training.model_dump(mode="json", by_alias=True, exclude=set(unhashed)),
        }
        return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.model_validate_json(Path(path).read_text())


# Which training field produced each generated DeepSpeed key: names both in a conflict.
_GENERATED_FROM: dict[str, str] = {
    "train_batch_size": "training.microBatchSize x gradientAccumulationSteps x world size",
    "train_micro_batch_size_per_gpu": "training.microBatchSize",
    "gradient_accumulation_steps": "training.gradientAccumulationSteps",
    "gradient_clipping": "training.gradClip",
    "zero_optimization.stage": "training.zeroStage",
    "bf16.enabled": "training.precision",
    "fp16.enabled": "training.precision",
}

# Any value: a leaf the trainer passes to DeepSpeed as it is.
ANY = None
# Offload targets the trainer supports; NVMe needs aio paths the pods do not mount.
_OFFLOAD = {"device": ("cpu", "none"), "pin_memory": ANY}

# The DeepSpeed keys the trainer understands (an allow list): a nested key names its
# sub-keys; a leaf is ANY or the tuple of values allowed. Everything else is rejected,
# because a DeepSpeed feature the loop was not written for breaks it silently.
ALLOWED_DEEPSPEED_KEYS: dict[str, Any] = {
    "train_batch_size": ANY,
    "train_micro_batch_size_per_gpu": ANY,
    "gradient_accumulation_steps": ANY,
    "gradient_clipping": ANY,
    "steps_per_print": ANY,
    "wall_clock_breakdown": ANY,
    "memory_breakdown": ANY,
    "prescale_gradients": ANY,
    "gradient_predivide_factor": ANY,
    "communication_data_type": ("fp32", "fp16", "bf16"),
    "data_types": {"grad_accum_dtype": ("fp32", "fp16", "bf16")},
    "bf16": {"enabled": ANY, "immediate_grad_update": ANY},
    "fp16": {
        "enabled": ANY,
        "loss_scale": ANY,
        "initial_scale_power": ANY,
        "loss_scale_window": ANY,
        "hysteresis": ANY,
        "consecutive_hysteresis": ANY,
        "min_loss_scale": ANY,
    },
    "zero_optimization": {
        "stage": ANY,
        "overlap_comm": ANY,
        "contiguous_gradients": ANY,
        "reduce_scatter": ANY,
        "reduce_bucket_size": ANY,
        "allgather_partitions": ANY,
        "allgather_bucket_size": ANY,
        "round_robin_gradients": ANY,
        "sub_group_size": ANY,
        "stage3_prefetch_bucket_size": ANY,
        "stage3_param_persistence_threshold": ANY,
        "stage3_max_live_parameters": ANY,
        "stage3_max_reuse_distance": ANY,
        "stage3_gather_16bit_weights_on_model_save": ANY,
        "offload_optimizer": _OFFLOAD,
        "offload_param": _OFFLOAD,
    },
    "comms_logger": {"enabled": ANY, "verbose": ANY, "prof_all": ANY, "debug": ANY},
    "flops_profiler": {
        "enabled": ANY,
        "profile_step": ANY,
        "module_depth": ANY,
        "top_modules": ANY,
        "detailed": ANY,
    },
}
# Why well-known keys are refused: the message says what to do instead.
_REFUSED_BECAUSE: dict[str, str] = {
    "optimizer": "the trainer builds AdamW from training.learningRate/weightDecay/adamBeta* "
    "(DeepSpeedCPUAdam when zero_optimization.offload_optimizer.device is cpu)",
    "scheduler": "the trainer builds warmup + cosine from training.warmupSteps/minLearningRate",
    "checkpoint": "the trainer commits checkpoints itself (manifest after every rank's write); "
    "a decoupled writer would race the manifest",
    "tensor_parallel": "every rank is a data-parallel rank: tensor parallelism contradicts "
    "the batch arithmetic and the sampler",
    "sequence_parallel_size": "every rank is a data-parallel rank: sequence parallelism "
    "contradicts the batch arithmetic and the sampler",
    "pipeline": "the trainer runs no pipeline-parallel schedule",
    "elasticity": "the operator sets the world size; DeepSpeed elasticity would change the batch",
    "amp": "precision is training.precision (bf16/fp16 through DeepSpeed)",
    "zero_optimization.offload_param": "parameter offload applies only at ZeRO stage 3",
}


def generated_deepspeed_config(training: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config implied by `training` at this world size."""
    return {
        "train_batch_size": training.samples_per_step(world_size),
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "gradient_clipping": training.grad_clip,
        "zero_optimization": {"stage": training.zero_stage},
        "bf16": {"enabled": training.precision == "bf16"},
        "fp16": {"enabled": training.precision == "fp16"},
    }


def zero3_bucket_sizes(hidden_size: int) -> dict[str, int]:
    """ZeRO-3's buckets and optimizer sub-groups sized to the model's width, in elements.

    DeepSpeed's defaults (reduce bucket 5e8, prefetch bucket 5e7, persistence threshold
    1e5, sub-group 1e9) suit billion-parameter models: on a smaller one a bucket holds a
    large share of the model, gathered or reduced at once on every rank. The three bucket
    sizes follow the rule Hugging Face's DeepSpeed integration applies to "auto" values
    (transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig.trainer_config_finalize):
    reduce bucket hidden², prefetch bucket 0.9 x hidden², parameters under 10 x hidden
    elements (biases, norms) kept whole on every rank. The sub-group size is ours: the
    optimizer step flattens each sub-group's gradients into a new fp32 tensor and AdamW's
    foreach kernels make temporaries of its size, so a 1e9 sub-group is one more copy of a
    rank's whole partition at the peak; 10 x hidden² is about one transformer layer
    (12 x hidden²), a few optimizer calls per step. Measured (tests/trainer/test_zero3.py,
    85M parameters, 2 ranks, fp32): ZeRO-3's peak host memory per rank is 1.02 x ZeRO-0's
    with the three buckets alone, 0.72 with the sub-group too (0.68 at hidden²).
    """
    return {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
        "sub_group_size": 10 * hidden_size * hidden_size,
    }


def overridable_defaults(training: TrainConfig, hidden_size: int | None = None) -> dict[str, Any]:
    """Defaults a user's DeepSpeed keys may replace.

    The trainer prints its own log line (DeepSpeed's would interleave with it). Under
    bf16, gradients are reduced across ranks in fp32 and, where DeepSpeed supports it
    (ZeRO 1-3; outside ZeRO it requires the model dtype), accumulated across micro-steps
    in fp32, as Megatron and torchtitan do: DeepSpeed's default sums them in bf16, which
    loses the low bits of small gradients. At ZeRO-3, given the model's hidden size, the
    buckets and optimizer sub-groups are sized to it (zero3_bucket_sizes).
    """
    defaults: dict[str, Any] = {"steps_per_print": 2**31 - 1, "wall_clock_breakdown": False}
    if training.precision == "bf16":
        defaults["communication_data_type"] = "fp32"
        if training.zero_stage > 0:
            defaults["data_types"] = {"grad_accum_dtype": "fp32"}
    if training.zero_stage == 3 and hidden_size is not None:
        defaults["zero_optimization"] = zero3_bucket_sizes(hidden_size)
    return defaults


def deepspeed_config(
    training: TrainConfig,
    world_size: int,
    user: dict[str, Any] | None = None,
    *,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """Generated config with the user's raw DeepSpeed keys merged over it.

    A user key must be in ALLOWED_DEEPSPEED_KEYS. It may add to the generated config,
    repeat a generated value or replace an overridable default; one that contradicts a
    generated value is an error naming both, so there is one source of truth for every
    setting. `hidden_size` is the model's, where it is known (the trainer knows it; the
    operator, which never loads a model config, does not).
    """
    user = user or {}
    _check_allowed(user, ALLOWED_DEEPSPEED_KEYS, prefix="")
    offload_param = user.get("zero_optimization", {}).get("offload_param", {})
    if offload_param.get("device", "none") != "none" and training.zero_stage != 3:
        raise ValueError(
            "deepspeed.zero_optimization.offload_param is not allowed at "
            f"training.zeroStage {training.zero_stage}: "
            + _REFUSED_BECAUSE["zero_optimization.offload_param"]
        )
    merged = generated_deepspeed_config(training, world_size)
    _merge_into(merged, user, prefix="")
    return _with_defaults(overridable_defaults(training, hidden_size), merged)


# The keys of the generated config that follow from the batch shape at one world size.
BATCH_SHAPE_KEYS = frozenset({"train_batch_size", "gradient_accumulation_steps"})


def without_batch_shape(user: dict[str, Any]) -> dict[str, Any]:
    """`user` less the batch-shape keys: on a resume at another world size the checkpoint's
    global batch sets them, and the operator's ds_config.json repeats the ones it generated
    for the spec's gradient accumulation (a contradiction, were they kept)."""
    return {key: value for key, value in user.items() if key not in BATCH_SHAPE_KEYS}


def optimizer_offloaded(ds_config: dict[str, Any]) -> bool:
    """Whether ZeRO keeps the optimizer on the host (the trainer then uses DeepSpeedCPUAdam)."""
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {})
    return bool(offload.get("device", "none") != "none")


def _check_allowed(user: dict[str, Any], allowed: dict[str, Any], prefix: str) -> None:
    for key, value in user.items():
        path = f"{prefix}{key}"
        if key not in allowed:
            why = _REFUSED_BECAUSE.get(path)
            if why is not None:
                raise ValueError(f"deepspeed.{path} is not allowed: {why}")
            supported = ", ".join(sorted(allowed))
            raise ValueError(
                f"deepspeed.{path} is not supported by llmjob-train (supported here: {supported})"
            )
        rule = allowed[key]
        if isinstance(rule, dict):
            if not isinstance(value, dict):
                raise ValueError(f"deepspeed.{path} must be an object")
            _check_allowed(value, rule, prefix=f"{path}.")
        elif isinstance(rule, tuple) and value not in rule:
            raise ValueError(
                f"deepspeed.{path}={json.dumps(value)} is not supported by llmjob-train "
                f"(one of {', '.join(json.dumps(v) for v in rule)})"
            )


def _with_defaults(defaults: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """`config` over `defaults`, section by section."""
    result = dict(defaults)
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _with_defaults(result[key], value)
        else:
            result[key] = value
    return result


def _merge_into(base: dict[str, Any], overlay: dict[str, Any], prefix: str) -> None:
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value, prefix=f"{path}.")
        elif key in base and base[key] != value:
            source = _GENERATED_FROM.get(path, "the generated config")
            raise ValueError(
                f"deepspeed.{path}={json.dumps(value)} contradicts {source} "
                f"(which gives {json.dumps(base[key])}); set it there instead"
            )
        else:
            base[key] = value
