"""ZeRO-Offload through the passthrough: the trainer builds DeepSpeed's CPU AdamW for it.

DeepSpeed refuses a client torch optimizer with the optimizer offloaded, so a run that
finishes shows the trainer picked DeepSpeedCPUAdam (JIT-built once, cached like the
comm op).
"""

import json
from pathlib import Path

import pytest

from .conftest import Trainer, logged_losses, train_command, trainer_env, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_optimizer_offload_trains_with_deepspeeds_cpu_adam(
    tmp_path: Path, token_data: Path
) -> None:
    config = write_config(tmp_path, token_data, maxSteps=6, zeroStage=2)
    offload = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}
    ds_config = tmp_path / "ds_config.json"
    ds_config.write_text(json.dumps(offload))
    command = [*train_command(config), "--deepspeed-config", str(ds_config)]
    trainer = Trainer(command, trainer_env(), tmp_path / "run.log")
    assert trainer.wait(timeout=1100) == 0, trainer.output()[-4000:]
    losses = logged_losses(trainer.output())
    assert len(losses) == 6 and losses[-1] < losses[0], losses
