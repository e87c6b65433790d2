"""ZeRO-3 builds the model partitioned: host memory per rank, and the same training.

Two ranks on one "pod" through the real launcher. Peak RSS is measured by the trainer
itself (Linux VmHWM, reset just before the model is built), over the model build,
DeepSpeed's initialize and the first optimizer step (when AdamW allocates its moments).
"""

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from llmjob_trainer.presets import MODEL_PRESETS

from .conftest import Trainer, free_port, launch_command, logged_losses, trainer_env, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

WORLD = 2
BUILD_PEAK = re.compile(r"host memory: the model build peaked (\d+) MB over")
PEAK = re.compile(r"host memory: peak (\d+) MB over the (\d+) MB before the model was built")
PARAMETERS = re.compile(r"training test: ([\d.]+)M parameters")
# ~85M parameters, 340 MB in fp32: big enough that the model, its gradients and AdamW's
# two moments (16 bytes a parameter, ~1.4 GB at ZeRO-0) dwarf allocator noise.
BIG = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 64}


def run_ranks(
    directory: Path,
    token_data: Path,
    trainers: list[Trainer],
    model: Mapping[str, object],
    **training: Any,
) -> str:
    directory.mkdir()
    config = write_config(directory, token_data, **training)
    run = json.loads(config.read_text())
    run["model"] = dict(model)
    config.write_text(json.dumps(run))
    hostfile = directory / "hostfile"
    hostfile.write_text(f"127.0.0.1 slots={WORLD}\n")
    command = launch_command(hostfile, config, "127.0.0.1", free_port())
    # Large blocks straight from mmap, so freed memory leaves RSS: glibc's default raises
    # its mmap threshold after the first free and then keeps freed tensors in the heap,
    # which would measure the allocator's cache instead of what the process holds.
    env = trainer_env(MALLOC_MMAP_THRESHOLD_=str(2**20))
    trainer = Trainer(command, env, directory / "run.log")
    trainers.append(trainer)
    code = trainer.wait(timeout=1200)
    output = trainer.output()
    assert code == 0, output[-4000:]
    return output


def saved_model(directory: Path) -> str:
    """A saved Hugging Face model, so ZeRO-3 also loads pretrained weights partitioned."""
    preset = MODEL_PRESETS["tiny"]
    config = AutoConfig.for_model(preset.model_type, **preset.config)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)  # type: ignore[no-untyped-call]
    return str(directory)


def test_zero3_peak_host_memory_per_rank_is_a_world_fraction_of_zero0s(
    tmp_path: Path, token_data: Path, trainers: list[Trainer]
) -> None:
    builds, peaks, parameters = {}, {}, {}
    for stage in (0, 3):
        output = run_ranks(
            tmp_path / f"zero{stage}",
            token_data,
            trainers,
            zeroStage=stage,
            maxSteps=2,
            microBatchSize=1,
            gradientAccumulationSteps=1,
            warmupSteps=1,
            model={"preset": "tiny", "config": BIG},
        )
        build, match = BUILD_PEAK.search(output), PEAK.search(output)
        assert build and match, output[-3000:]
        builds[stage], peaks[stage] = int(build.group(1)), int(match.group(1))
        parameters[stage] = PARAMETERS.search(output).group(1)  # type: ignore[union-attr]
    print(f"rank 0 host memory over its pre-model baseline: build {builds}, run {peaks} MB")
    print(f"ZeRO-3/ZeRO-0: build {builds[3] / builds[0]:.3f}, run {peaks[3] / peaks[0]:.3f}")
    # The build: ZeRO-0 holds the whole fp32 model, ZeRO-3 its 1/world share. Tolerance
    # +-40% of 1/world (allocator slack, one module materialised before it is partitioned).
    build_ratio = builds[3] / builds[0]
    assert 0.6 / WORLD <= build_ratio <= 1.4 / WORLD, (builds, build_ratio)
    # The run (build, initialize, first step): ZeRO-0 holds 4 fp32 copies (weights,
    # gradients, two AdamW moments); DeepSpeed's ZeRO-3 keeps an fp32 master partition
    # beside the parameter partition, so 5 copies / world. With the trainer's default
    # buckets and sub-groups (config.zero3_bucket_sizes) measured 0.68-0.72 against 0.625
    # (1.02 with DeepSpeed's 1e9 sub-group); tolerance -20% / +25%.
    run_ratio = peaks[3] / peaks[0]
    expected = 5 / (4 * WORLD)
    assert 0.8 * expected <= run_ratio <= 1.25 * expected, (peaks, run_ratio)
    assert parameters[3] == parameters[0]  # counted before partitioning


def test_zero3_trains_like_zero2(tmp_path: Path, token_data: Path, trainers: list[Trainer]) -> None:
    model = {"path": saved_model(tmp_path / "model")}  # the same weights for both
    losses = {}
    for stage in (2, 3):
        output = run_ranks(
            tmp_path / f"zero{stage}", token_data, trainers, model=model, zeroStage=stage
        )
        losses[stage] = logged_losses(output)
    assert len(losses[3]) == 8
    assert losses[3] == pytest.approx(losses[2], rel=2e-4), losses
