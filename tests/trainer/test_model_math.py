"""MFU's arithmetic, the device peak table, and the chunked loss: no process, no engine."""

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llmjob_trainer.config import ModelConfig
from llmjob_trainer.flops import compute_parameters, flops_per_token, peak_flops_per_second
from llmjob_trainer.loss import chunked_cross_entropy
from llmjob_trainer.model import build_model, hidden_size_of
from llmjob_trainer.presets import MODEL_PRESETS


def meta_model(preset: str) -> torch.nn.Module:
    spec = MODEL_PRESETS[preset]
    config = AutoConfig.for_model(spec.model_type, **spec.config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)  # type: ignore[no-any-return,no-untyped-call]


# By hand. gpt2-124m: 124,439,808 parameters, of which the 1024 x 768 position embedding
# is a lookup (the token embedding is tied to the head, so it is the head's matmul).
# 6N = 6 x 123,653,376; attention 12 x layers 12 x width 768 x seq 1024 = 113,246,208.
GPT2_COMPUTE_PARAMS = 124_439_808 - 1024 * 768
GPT2_FLOPS_PER_TOKEN = 6 * 123_653_376 + 113_246_208  # = 855,166,464
# llama-1b (tied, GQA 32/8 heads of 64): per layer q,o 2 x 2048^2, k,v 2 x 2048 x 512,
# MLP 3 x 2048 x 8192, two norms 2 x 2048 = 60,821,504; x 16 layers, + tied embedding
# 32000 x 2048 (the head) + final norm 2048 = 1,038,682,112. Attention: 12 x 16 x 2048 x 2048.
LLAMA_COMPUTE_PARAMS = 16 * 60_821_504 + 32000 * 2048 + 2048
LLAMA_FLOPS_PER_TOKEN = 6 * 1_038_682_112 + 12 * 16 * 2048 * 2048  # = 7,037,399,040


@pytest.mark.parametrize(
    ("preset", "seq_len", "params", "flops"),
    [
        ("gpt2-124m", 1024, GPT2_COMPUTE_PARAMS, GPT2_FLOPS_PER_TOKEN),
        ("llama-1b", 2048, LLAMA_COMPUTE_PARAMS, LLAMA_FLOPS_PER_TOKEN),
    ],
)
def test_flops_per_token_match_the_hand_computed_values(
    preset: str, seq_len: int, params: int, flops: int
) -> None:
    model = meta_model(preset)
    assert compute_parameters(model) == params
    assert flops_per_token(model.config, compute_parameters(model), seq_len) == flops


def test_an_untied_input_embedding_is_not_compute() -> None:
    spec = MODEL_PRESETS["llama-1b"]
    config = AutoConfig.for_model(spec.model_type, **{**spec.config, "tie_word_embeddings": False})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    total = sum(p.numel() for p in model.parameters())
    assert total == LLAMA_COMPUTE_PARAMS + 32000 * 2048  # the head is now its own matrix
    assert compute_parameters(model) == LLAMA_COMPUTE_PARAMS


def test_a_zero3_partitioned_parameter_counts_its_full_size() -> None:
    model = meta_model("gpt2-124m")
    for parameter in model.parameters():
        parameter.ds_numel = parameter.numel()  # type: ignore[attr-defined]  # as ZeRO-3 sets it
        parameter.data = torch.empty(0, device="meta")
    assert compute_parameters(model) == GPT2_COMPUTE_PARAMS


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4e12),
        ("NVIDIA H100 PCIe", 756.5e12),
        ("NVIDIA H100 NVL", 835.5e12),
        ("NVIDIA H800", 989.4e12),
        ("NVIDIA H200", 989.4e12),
        ("NVIDIA B200", 2250e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA GeForce RTX 4090", None),  # not in the table: no MFU rather than a guess
    ],
)
def test_peaks_match_exact_device_names(name: str, peak: float | None) -> None:
    assert peak_flops_per_second(name, "bf16", override="") == peak


def test_the_peak_can_be_overridden_and_fp32_or_no_gpu_has_none() -> None:
    assert peak_flops_per_second("NVIDIA GeForce RTX 4090", "bf16", override="165e12") == 165e12
    assert peak_flops_per_second("NVIDIA H100 PCIe", "fp32", override="") is None
    assert peak_flops_per_second(None, "bf16", override="1e12") is None


def reference_loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """The loss as llmjob-train computed it before chunking: all logits at once, in fp32."""
    logits = type(model).forward(model, input_ids=windows[:, :-1], use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten())


@pytest.mark.parametrize("preset", ["tiny", "llama-1b"])
def test_the_chunked_loss_and_its_gradients_equal_the_full_vocabulary_loss(preset: str) -> None:
    overrides = (
        {}
        if preset == "tiny"
        else {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300}
    )  # fmt: skip
    model: torch.nn.Module = build_model(ModelConfig(preset=preset, config=overrides), seed=3)
    model.eval()  # no dropout: the two passes must see the same network
    windows = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(0))

    expected = reference_loss(model, windows)
    expected.backward()  # type: ignore[no-untyped-call]
    expected_grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    model.zero_grad()
    # 3 x 16 = 48 tokens in chunks of 7: uneven, so the last chunk is short.
    loss = model(input_ids=windows[:, :-1], targets=windows[:, 1:], chunk_tokens=7)
    loss.backward()

    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for parameter, grad in zip(model.parameters(), expected_grads, strict=True):
        torch.testing.assert_close(parameter.grad, grad, rtol=1e-5, atol=1e-7)


def test_chunked_cross_entropy_is_the_mean_over_all_tokens() -> None:
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 5, 8)
    targets = torch.randint(0, 11, (2, 5))
    whole = torch.nn.functional.cross_entropy(head(hidden).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(chunked_cross_entropy(hidden, head, targets, 3), whole)


def test_the_width_that_sizes_zero3s_buckets_is_read_from_the_config_alone(tmp_path: Path) -> None:
    assert hidden_size_of(ModelConfig(preset="gpt2-124m")) == 768  # GPT-2 calls it n_embd
    assert hidden_size_of(ModelConfig(preset="llama-1b")) == 2048
    assert hidden_size_of(ModelConfig(preset="tiny", config={"n_embd": 96})) == 96
    preset = MODEL_PRESETS["tiny"]
    AutoConfig.for_model(preset.model_type, **preset.config).save_pretrained(tmp_path)
    assert hidden_size_of(ModelConfig(path=str(tmp_path))) == 64  # config.json, no weights
    assert hidden_size_of(ModelConfig(path=str(tmp_path), config={"n_embd": 128})) == 128
