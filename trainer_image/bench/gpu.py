"""`make bench-gpu`: bf16 tokens/s and MFU of llmjob-train for gpt2-124m and llama-1b.

One process on one GPU, ZeRO-1, random tokens (throughput does not depend on the text).
The trainer computes MFU itself (6N + attention FLOPs per token, embedding lookups
excluded, against the exact device name's dense bf16 peak, or LLMJOB_PEAK_FLOPS);
this prints the median of its log intervals after the first.
Without CUDA it says so and exits 0.
"""

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from llmjob_trainer.data import TokenHeader, write_tokens
from llmjob_trainer.presets import MODEL_PRESETS

# preset -> (seqLen, microBatchSize): sized for one 80 GB+ GPU without activation recompute.
RUNS = {"gpt2-124m": (1024, 16), "llama-1b": (2048, 8)}
STEPS, INTERVAL = 40, 5
LOG_LINE = re.compile(r"\| (\d+) tok/s \| [\d.]+ ms/step(?: \| mfu ([\d.]+)%)?")


def bench(preset: str, directory: Path, compile_model: bool) -> tuple[float, float | None]:
    seq_len, micro_batch = RUNS[preset]
    vocab = MODEL_PRESETS[preset].vocab_size
    count = (STEPS + 1) * micro_batch * (seq_len + 1)
    tokens = np.random.default_rng(0).integers(0, vocab, count)
    write_tokens(directory / "train.bin", tokens, TokenHeader("uint16", count, vocab, None, None))
    config = {
        "jobName": f"bench-{preset}",
        "model": {"preset": preset, "compile": compile_model},
        "data": {"path": str(directory / "train.bin")},
        "training": {
            "maxSteps": STEPS,
            "seqLen": seq_len,
            "microBatchSize": micro_batch,
            "warmupSteps": 5,
            "precision": "bf16",
            "zeroStage": 1,
            "logIntervalSteps": INTERVAL,
        },
        "checkpoint": {"dir": str(directory / "checkpoints"), "intervalSteps": 10 * STEPS},
        "metricsPort": 0,
    }
    (directory / "train.json").write_text(json.dumps(config))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    command = [
        sys.executable,
        "-m",
        "llmjob_trainer.train",
        "--config",
        str(directory / "train.json"),
    ]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"{preset}: llmjob-train exited {result.returncode}\n{result.stderr[-4000:]}"
        )
    matches = LOG_LINE.findall(result.stderr)[1:]
    rate = statistics.median(float(rate) for rate, _ in matches)
    mfus = [float(mfu) / 100 for _, mfu in matches if mfu]
    return rate, statistics.median(mfus) if mfus else None


def main() -> None:
    if not torch.cuda.is_available():
        print("bench-gpu: NOT RUN: no CUDA device on this machine, so no GPU figure was measured")
        return
    compile_model = "--compile" in sys.argv
    print(f"device: {torch.cuda.get_device_name()}, bf16, ZeRO-1, compile={compile_model}")
    for preset in RUNS:
        with tempfile.TemporaryDirectory(prefix=f"llmjob-bench-{preset}-") as scratch:
            rate, mfu = bench(preset, Path(scratch), compile_model)
        shown = f"{100 * mfu:.1f}%" if mfu is not None else "n/a (unknown device peak)"
        print(f"{preset:>10}: {rate:,.0f} tokens/s, MFU {shown}")


if __name__ == "__main__":
    main()
