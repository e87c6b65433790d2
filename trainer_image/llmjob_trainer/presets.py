"""Named model architectures that build from a config alone, with nothing downloaded.

Plain data (no torch): the operator reads it to validate `seqLen` and vocabulary,
the trainer turns it into a `transformers` config.
"""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelPreset:
    """A Hugging Face architecture (`model_type`) and the config keys that size it."""

    model_type: str
    config: dict[str, Any]
    max_positions: int
    vocab_size: int


MODEL_PRESETS: dict[str, ModelPreset] = {
    # Small enough for two CPU processes to train in seconds; byte-level vocabulary
    # (llmjob-prepare's fallback: bytes 0-255, 256 ends a document).
    "tiny": ModelPreset(
        model_type="gpt2",
        config={
            "n_layer": 2,
            "n_head": 4,
            "n_embd": 64,
            "n_positions": 256,
            "vocab_size": 512,
            "bos_token_id": 256,
            "eos_token_id": 256,
        },
        max_positions=256,
        vocab_size=512,
    ),
    "gpt2-124m": ModelPreset(
        model_type="gpt2",
        config={"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
        max_positions=1024,
        vocab_size=50257,
    ),
    "llama-1b": ModelPreset(
        model_type="llama",
        config={
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 4096,
            "vocab_size": 32000,
            "rope_theta": 500000.0,
            "tie_word_embeddings": True,
        },
        max_positions=4096,
        vocab_size=32000,
    ),
}
