"""The causal language model: a named preset built from its config, or a Hugging Face model."""

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from llmjob_trainer.config import ModelConfig
from llmjob_trainer.errors import ConfigError
from llmjob_trainer.presets import MODEL_PRESETS


def build_model(spec: ModelConfig, seed: int) -> PreTrainedModel:
    """The model in fp32 on the CPU (DeepSpeed moves and casts it); same weights for a seed."""
    torch.manual_seed(seed)
    model: PreTrainedModel
    try:
        if spec.preset is not None:
            preset = MODEL_PRESETS[spec.preset]
            config = AutoConfig.for_model(preset.model_type, **{**preset.config, **spec.config})
            model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                config, attn_implementation="sdpa"
            )
        else:
            # path or hubId: a local directory never touches the network.
            source = spec.path or spec.hub_id
            assert source is not None  # ModelConfig requires exactly one source
            model = AutoModelForCausalLM.from_pretrained(
                source, attn_implementation="sdpa", dtype=torch.float32, **spec.config
            )
    except (OSError, TypeError, ValueError) as err:
        raise ConfigError(f"cannot build the model from model {_describe(spec)}: {err}") from err
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()  # type: ignore[no-untyped-call]
    return model


def _describe(spec: ModelConfig) -> str:
    return spec.preset or spec.path or spec.hub_id or "?"


def vocab_size(model: PreTrainedModel) -> int:
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    return embeddings.num_embeddings


def flops_per_token(config: PretrainedConfig, parameters: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N plus attention (PaLM appendix B, as in nanoGPT)."""
    values: dict[str, Any] = config.to_dict()
    layers = int(values.get("num_hidden_layers") or values.get("n_layer") or 0)
    width = int(values.get("hidden_size") or values.get("n_embd") or 0)
    return 6.0 * parameters + 12.0 * layers * width * seq_len
