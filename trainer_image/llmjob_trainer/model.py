"""The causal language model: a named preset built from its config, or a Hugging Face model.

Built in the training dtype. Under ZeRO-3 every parameter is partitioned as it is
created (transformers' own deepspeed.zero.Init path, which also initialises weights one
gathered module at a time) and pretrained weights load straight into the partitions, so
no rank ever holds the whole model.
"""

from functools import partial
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.integrations.deepspeed import (
    set_hf_deepspeed_config,
    unset_hf_deepspeed_config,
)

from llmjob_trainer.config import ModelConfig
from llmjob_trainer.errors import ConfigError
from llmjob_trainer.loss import causal_lm_forward
from llmjob_trainer.presets import MODEL_PRESETS

TRAINING_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_model(
    spec: ModelConfig,
    seed: int,
    dtype: torch.dtype = torch.float32,
    ds_config: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """The model on the CPU (DeepSpeed moves it); the same weights for a seed.

    Pass the DeepSpeed config the engine will use: at ZeRO stage 3 the model is built
    partitioned (torch.distributed must be initialised first).
    """
    torch.manual_seed(seed)
    zero3 = ds_config is not None and ds_config["zero_optimization"]["stage"] == 3
    # transformers holds only a weak reference: this one must live through the build.
    zero3_config = ZeRO3Config(ds_config) if zero3 and ds_config is not None else None
    if zero3_config is not None:
        set_hf_deepspeed_config(zero3_config)  # type: ignore[no-untyped-call]
    model: PreTrainedModel
    try:
        if spec.preset is not None:
            preset = MODEL_PRESETS[spec.preset]
            config = AutoConfig.for_model(preset.model_type, **{**preset.config, **spec.config})
            model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                config, attn_implementation="sdpa", dtype=dtype
            )
        else:
            # path or hubId: a local directory never touches the network.
            source = spec.path or spec.hub_id
            assert source is not None  # ModelConfig requires exactly one source
            model = AutoModelForCausalLM.from_pretrained(
                source, attn_implementation="sdpa", dtype=dtype, **spec.config
            )
    except (OSError, TypeError, ValueError) as err:
        raise ConfigError(f"cannot build the model from model {_describe(spec)}: {err}") from err
    finally:
        if zero3_config is not None:
            unset_hf_deepspeed_config()  # type: ignore[no-untyped-call]
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()  # type: ignore[no-untyped-call]
    # DeepSpeed hooks (loss scaling, ZeRO-3 gathering) only what its engine's forward
    # computes, and the engine's module must stay the Hugging Face model (checkpoints,
    # export): so the chunked loss is the model's forward, engine(input_ids, targets).
    model.forward = partial(causal_lm_forward, model)
    return model


def hidden_size_of(spec: ModelConfig) -> int | None:
    """The model's width, read from its config alone (no weights), as Hugging Face's
    DeepSpeed integration reads it: `hidden_size`, else the largest of `hidden_sizes`."""
    try:
        if spec.preset is not None:
            preset = MODEL_PRESETS[spec.preset]
            config = AutoConfig.for_model(preset.model_type, **{**preset.config, **spec.config})
        else:
            source = spec.path or spec.hub_id
            assert source is not None  # ModelConfig requires exactly one source
            config = AutoConfig.from_pretrained(source, **spec.config)
    except (OSError, TypeError, ValueError) as err:
        raise ConfigError(f"cannot read the config of model {_describe(spec)}: {err}") from err
    width = getattr(config, "hidden_size", None)
    if width is None and getattr(config, "hidden_sizes", None):
        width = max(config.hidden_sizes)
    return int(width) if width is not None else None


class ZeRO3Config:
    """What transformers asks of the DeepSpeed config while it builds a model under ZeRO-3.

    Its HfDeepSpeedConfig answers the same two questions but requires accelerate, which
    the trainer does not otherwise need.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def is_zero3(self) -> bool:
        return True


def _describe(spec: ModelConfig) -> str:
    return spec.preset or spec.path or spec.hub_id or "?"


def vocab_size(model: PreTrainedModel) -> int:
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    return embeddings.num_embeddings
