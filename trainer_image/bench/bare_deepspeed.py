"""The baseline of `make bench`: the least a DeepSpeed training loop can do.

Same model, data, optimizer, schedule and DeepSpeed config as llmjob-train (read from
the same train.json), with none of its extras: no checkpoints, metrics, SIGTERM vote,
loss averaging or logging beyond one line per interval (which the bench times).

    python bare_deepspeed.py train.json
"""

import sys
from functools import partial
from pathlib import Path

import deepspeed
import numpy as np
import torch

from llmjob_trainer.config import RunConfig, deepspeed_config
from llmjob_trainer.data import ShuffledSampler, TokenWindows
from llmjob_trainer.model import TRAINING_DTYPES, build_model
from llmjob_trainer.train import causal_lm_loss, lr_factor, make_optimizer


def main() -> None:
    run = RunConfig.load(sys.argv[1])
    training = run.training
    deepspeed.init_distributed()
    ds_config = deepspeed_config(training, 1)
    model = build_model(run.model, training.seed, TRAINING_DTYPES[training.precision], ds_config)
    optimizer = make_optimizer(model, training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, training=training))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
    )
    windows = TokenWindows(Path(run.data.path), training.seq_len, run.data.dtype)
    sampler = ShuffledSampler(windows.count, training.seed)
    for step in range(1, training.max_steps + 1):
        for indices in sampler.next_step(
            training.micro_batch_size, training.gradient_accumulation_steps, 0, 1
        ):
            batch = torch.from_numpy(np.stack([windows.window(i) for i in indices]))
            loss = causal_lm_loss(engine, batch.to(engine.device))
            engine.backward(loss)
            engine.step()
        if step % training.log_interval_steps == 0 or step == training.max_steps:
            # .item() waits for the device, as the trainer's per-step all-reduce does; the
            # bench times the arrival of this line.
            print(f"bare step {step} | loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
