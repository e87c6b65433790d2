"""The baseline of `make bench`: the least a DeepSpeed training loop can do.

Same model, data, optimizer, schedule and DeepSpeed config as llmjob-train (read from
the same train.json), with none of its extras: no checkpoints, metrics, SIGTERM vote,
loss averaging or logging beyond one line per interval.

    python bare_deepspeed.py train.json
"""

import sys
import time
from functools import partial
from pathlib import Path

import deepspeed
import numpy as np
import torch

from llmjob_trainer.config import RunConfig, deepspeed_config
from llmjob_trainer.data import ShuffledSampler, TokenWindows
from llmjob_trainer.model import build_model
from llmjob_trainer.train import causal_lm_loss, lr_factor, make_optimizer


def main() -> None:
    run = RunConfig.load(sys.argv[1])
    training = run.training
    deepspeed.init_distributed()
    model = build_model(run.model, training.seed)
    optimizer = make_optimizer(model, training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, training=training))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(training, 1),
    )
    windows = TokenWindows(Path(run.data.path), training.seq_len, run.data.dtype)
    sampler = ShuffledSampler(windows.count, training.seed)
    tokens_per_step = training.samples_per_step(1) * training.seq_len
    started = time.perf_counter()
    for step in range(1, training.max_steps + 1):
        for indices in sampler.next_step(
            training.micro_batch_size, training.gradient_accumulation_steps, 0, 1
        ):
            batch = torch.from_numpy(np.stack([windows.window(i) for i in indices]))
            loss = causal_lm_loss(engine, batch.to(engine.device))
            engine.backward(loss)
            engine.step()
        if step % training.log_interval_steps == 0:
            loss.item()  # waits for the device, as the trainer's per-step all-reduce does
            rate = tokens_per_step * training.log_interval_steps / (time.perf_counter() - started)
            print(f"bare step {step} | {rate:.0f} tok/s")
            started = time.perf_counter()


if __name__ == "__main__":
    main()
