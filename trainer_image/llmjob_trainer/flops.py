"""Model FLOPs utilisation: FLOPs per token of a model, and each device's dense peak.

Pure functions of numbers and names (no CUDA calls), so the formula is tested on a CPU.
"""

import os
from typing import Any

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peak FLOP/s per device, from the vendors'
# datasheets, keyed by the exact name torch.cuda.get_device_name() reports: a
# substring match gives an H100 PCIe the SXM part's peak.
PEAK_FLOPS: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 989.4e12,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.5e12,
    "NVIDIA H100 NVL": 835.5e12,
    "NVIDIA H800": 989.4e12,  # H800 SXM5
    "NVIDIA H800 PCIe": 756.5e12,
    "NVIDIA H200": 989.4e12,  # H200 SXM
    "NVIDIA H200 NVL": 835.5e12,
    "NVIDIA GH200 480GB": 989.4e12,
    "NVIDIA B200": 2250e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A800-SXM4-80GB": 312e12,
    "NVIDIA L40S": 362.05e12,
    "NVIDIA L4": 121e12,
    "NVIDIA A10": 125e12,
}
# A device's peak in FLOP/s, for a device the table lacks or a clocked-down part.
PEAK_FLOPS_ENV = "LLMJOB_PEAK_FLOPS"


def peak_flops_per_second(
    device_name: str | None, precision: str, override: str | None = None
) -> float | None:
    """The device's dense half-precision peak; None (no MFU) for fp32 or an unknown device."""
    if device_name is None or precision == "fp32":
        return None
    override = os.environ.get(PEAK_FLOPS_ENV) if override is None else override
    if override:
        return float(override)
    return PEAK_FLOPS.get(device_name)


def parameter_count(parameter: torch.Tensor) -> int:
    """Elements of a parameter, also when ZeRO-3 has partitioned it to an empty tensor."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))


def compute_parameters(model: Any) -> int:
    """Parameters that take part in matrix products: all but embedding lookups.

    Token and position embeddings are lookups (no FLOPs). A token embedding tied to the
    output head is the head's weight, which is a matrix product, so it counts once.
    """
    output = model.get_output_embeddings()
    head = output.weight if output is not None else None
    lookups: int = sum(
        parameter_count(module.weight)
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding) and module.weight is not head
    )
    return sum(parameter_count(p) for p in model.parameters()) - lookups


def flops_per_token(config: Any, compute_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N plus attention (PaLM appendix B, as in nanoGPT)."""
    values: dict[str, Any] = config.to_dict()
    layers = int(values.get("num_hidden_layers") or values.get("n_layer") or 0)
    width = int(values.get("hidden_size") or values.get("n_embd") or 0)
    return 6.0 * compute_params + 12.0 * layers * width * seq_len
