"""Checkpoint commit and resume time and MB/s for one process (ZeRO-2, fp32 by default).

    python checkpoint_io.py [preset]        # default gpt2-124m: about 2 GB of state

Commit (synchronous) includes every fsync, the crc32s and the manifest; resume checks
every crc32 and loads what commit just wrote, so with free memory it reads the page cache.
"""

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import deepspeed
import torch

from llmjob_trainer.checkpoint import Checkpointer
from llmjob_trainer.config import ModelConfig, TrainConfig, deepspeed_config
from llmjob_trainer.model import build_model
from llmjob_trainer.train import make_optimizer


def main() -> None:
    preset = sys.argv[1] if len(sys.argv) > 1 else "gpt2-124m"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    deepspeed.init_distributed(verbose=False)
    training = TrainConfig(precision="fp32", zero_stage=2, micro_batch_size=1, seq_len=32)
    model = build_model(ModelConfig(preset=preset), training.seed)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=make_optimizer(model, training), config=deepspeed_config(training, 1)
    )
    tokens = torch.randint(0, 256, (1, 33), device=engine.device)
    loss = engine(input_ids=tokens[:, :-1], targets=tokens[:, 1:])
    engine.backward(loss)
    engine.step()  # the optimizer now has its moments: the checkpoint is full size
    with tempfile.TemporaryDirectory(
        prefix="llmjob-ckpt-bench-", dir=os.environ.get("BENCH_DIR")
    ) as d:
        checkpointer = Checkpointer(
            root=Path(d), run_id="bench", attempt=0, keep_last=1, config_hash="bench", rank=0,
            world_size=1, zero_stage=2, samples_per_step=1, max_steps=1, asynchronous=False,
        )  # fmt: skip
        checkpointer.start()
        checkpointer.attach(engine)
        started = time.perf_counter()
        checkpointer.save(1, {"llmjob": {"step": 1}})
        saved = checkpointer.commit_pending()
        save_seconds = time.perf_counter() - started
        size_mb = saved.size_bytes / 1e6
        started = time.perf_counter()
        resume = checkpointer.choose()  # verifies every file's crc32
        assert resume is not None
        checkpointer.load(engine, resume, training.seed)
        load_seconds = time.perf_counter() - started
        checkpointer.close()
    print(f"checkpoint {preset}: {size_mb:.0f} MB")
    for what, seconds in (
        ("commit (save, fsync, manifest)", save_seconds),
        ("resume (crc32 check, load)", load_seconds),
    ):
        print(f"  {what}: {seconds:.2f} s, {size_mb / seconds:.0f} MB/s")


if __name__ == "__main__":
    main()
