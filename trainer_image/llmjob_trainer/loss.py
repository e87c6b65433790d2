"""Next-token cross entropy computed in chunks of tokens, never over all logits at once.

A 128k vocabulary at 4 x 4096 tokens is ~8 GB of fp32 logits per rank. Here each chunk's
logits exist only while its loss is taken, and again in the backward pass, which
recomputes them (activation checkpointing) instead of keeping them.
"""

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

# fp32 logits per chunk: 2**25 elements = 128 MiB (e.g. 256 tokens of a 128k vocabulary).
CHUNK_LOGIT_ELEMENTS = 2**25


def chunk_tokens_for(vocab_size: int) -> int:
    return max(1, CHUNK_LOGIT_ELEMENTS // vocab_size)


def _chunk_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> Any:
    logits = head(hidden).float()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Mean cross entropy of `head(hidden)` against `targets`, `chunk_tokens` at a time."""
    hidden, targets = hidden.flatten(0, -2), targets.flatten()
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.numel(), chunk_tokens):
        end = start + chunk_tokens
        chunk = checkpoint(
            _chunk_loss_sum, head, hidden[start:end], targets[start:end], use_reentrant=False
        )
        total = total + chunk
    return total / targets.numel()


def causal_lm_forward(
    model: Any, input_ids: torch.Tensor, targets: torch.Tensor, chunk_tokens: int | None = None
) -> torch.Tensor:
    """The loss of a Hugging Face causal LM: its base model, then the chunked head."""
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    chunk = chunk_tokens or chunk_tokens_for(head.out_features)
    return chunked_cross_entropy(hidden, head, targets, chunk)
