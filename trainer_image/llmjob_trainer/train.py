"""`llmjob-train`: the training loop. One process per rank, under any launcher.

    llmjob-train --config train.json [--deepspeed-config ds_config.json]

Without RANK/WORLD_SIZE in the environment it trains as a single process. Exit codes
(DESIGN §3): 0 finished, 2 invalid configuration, 3 unreadable data, 143 stopped by
SIGTERM after committing a checkpoint, anything else retryable.
"""

import argparse
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from pydantic import ValidationError

from llmjob_trainer.checkpoint import (
    ATTEMPT_ENV,
    Checkpointer,
    CheckpointReadError,
    SupersededError,
    accumulation_for,
    fresh_run_id,
    inject_fault,
    run_id_from,
)
from llmjob_trainer.config import (
    RunConfig,
    TrainConfig,
    deepspeed_config,
    optimizer_offloaded,
    without_batch_shape,
)
from llmjob_trainer.data import (
    BYTE_TOKENIZER,
    BatchPrefetcher,
    ShuffledSampler,
    TokenWindows,
    resolve_tokenizer,
    validation_windows,
)
from llmjob_trainer.errors import (
    EXIT_DONE,
    EXIT_INVALID_CONFIG,
    EXIT_STOPPED_BY_SIGTERM,
    EXIT_UNREADABLE_DATA,
    ConfigError,
    DataError,
)
from llmjob_trainer.exit_report import report_path, write_exit_report
from llmjob_trainer.fabric import allreduce_bus_bandwidth, capture_nccl_choice, transport
from llmjob_trainer.flops import (
    PEAK_FLOPS_ENV,
    compute_parameters,
    flops_per_token,
    parameter_count,
    peak_flops_per_second,
)
from llmjob_trainer.memory import device_memory_bytes, peak_rss_bytes, reset_peak_rss
from llmjob_trainer.metrics import TrainerMetrics
from llmjob_trainer.model import TRAINING_DTYPES, build_model, hidden_size_of, vocab_size

log = logging.getLogger("llmjob.train")


def decay_start(training: TrainConfig) -> int:
    """The first step whose learning rate depends on maxSteps."""
    if training.lr_schedule == "wsd":
        return training.max_steps - training.decay_steps
    return training.warmup_steps


def lr_at(step: int, training: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine decay
    (over the rest of the run, or for wsd over the last decaySteps after a constant phase)."""
    peak, floor = training.learning_rate, training.min_learning_rate
    if step < training.warmup_steps:
        return peak * (step + 1) / (training.warmup_steps + 1)
    start = decay_start(training)
    if step < start:
        return peak
    progress = min(1.0, (step - start) / max(1, training.max_steps - start))
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def schedule_change_problem(
    step: int, checkpoint_max_steps: int, training: TrainConfig
) -> str | None:
    """Why resuming at `step` with this maxSteps would change the learning rate of a step
    already or still to be trained, if it would. Every other resume is exact."""
    if checkpoint_max_steps == training.max_steps:
        return None
    before = training.model_copy(update={"max_steps": checkpoint_max_steps})
    if step <= min(decay_start(before), decay_start(training)):
        return None
    return (
        f"the checkpoint at step {step} was trained for maxSteps {checkpoint_max_steps}; with "
        f"maxSteps {training.max_steps} the {training.lr_schedule} schedule gives other learning "
        f"rates from step {min(decay_start(before), decay_start(training))} on: restore "
        f"maxSteps (or use lrSchedule wsd, whose length may change before its decay begins)"
    )


def batch_change_problem(
    checkpoint_samples: int, checkpoint_world_size: int, training: TrainConfig, world_size: int
) -> str | None:
    """Why resuming would change the global batch, if it would. At another world size the
    trainer picks the accumulation that keeps it (or says why none can), whatever is set."""
    if checkpoint_world_size != world_size:
        return None
    samples = training.samples_per_step(world_size)
    if samples == checkpoint_samples:
        return None
    return (
        f"the checkpoint was trained with a global batch of {checkpoint_samples} samples per "
        f"step; microBatchSize {training.micro_batch_size} x gradientAccumulationSteps "
        f"{training.gradient_accumulation_steps} x {world_size} ranks is {samples}: restore "
        f"them, or set checkpoint.resume to Never to start a fresh run"
    )


def lr_factor(step: int, training: TrainConfig) -> float:
    return lr_at(step, training) / training.learning_rate


def make_optimizer(
    model: torch.nn.Module, training: TrainConfig, offloaded: bool = False
) -> torch.optim.Optimizer:
    """AdamW that decays matrices (weights, embeddings) but not biases and norms.

    With the optimizer offloaded to the host, DeepSpeed's CPU AdamW (the same update,
    vectorised on the host); DeepSpeed refuses torch's AdamW there.
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def dims(p: torch.nn.Parameter) -> int:
        return len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 partitions are flat

    groups = [
        {"params": [p for p in params if dims(p) >= 2], "weight_decay": training.weight_decay},
        {"params": [p for p in params if dims(p) < 2], "weight_decay": 0.0},
    ]
    betas = (training.adam_beta1, training.adam_beta2)
    if offloaded:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=training.learning_rate, betas=betas, adamw_mode=True)  # type: ignore[no-any-return]
    return torch.optim.AdamW(groups, lr=training.learning_rate, betas=betas)


def causal_lm_loss(model: Any, windows: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy over windows of seqLen + 1 tokens (chunked; see loss.py)."""
    loss: torch.Tensor = model(input_ids=windows[:, :-1], targets=windows[:, 1:])
    return loss


class StopRequest:
    """Set by SIGTERM; the loop finishes its step, commits a checkpoint and exits 143."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("SIGTERM: stopping after this step's checkpoint")
        self.requested = True


def distributed_env() -> tuple[int, int, int]:
    """rank, world size, local rank; a lone process gets a one-rank group on loopback."""
    if "RANK" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def batch(windows: TokenWindows, indices: list[int], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack([windows.window(i) for i in indices])).to(device)


@torch.no_grad()
def validation_loss(engine: Any, windows: TokenWindows, batches: list[list[int]]) -> float:
    engine.eval()
    total = torch.zeros(1, device=engine.device)
    for indices in batches:
        total += causal_lm_loss(engine, batch(windows, indices, engine.device))
    engine.train()
    dist.all_reduce(total)
    return total.item() / (len(batches) * dist.get_world_size())


def export_model(engine: Any, directory: Path, tokenizer: str | None, is_master: bool) -> None:
    """Writes the model (safetensors + config) and its tokenizer, replacing `directory`."""
    module = engine.module
    # A no-op below ZeRO-3; under it, every rank takes part in gathering the full weights.
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        if is_master:
            staging = directory.with_name(f".{directory.name}.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            module.save_pretrained(staging)
            if tokenizer == BYTE_TOKENIZER:
                from llmjob_trainer.prepare import byte_level_tokenizer

                byte_level_tokenizer().save_pretrained(staging)
            elif tokenizer is not None:
                from transformers import AutoTokenizer

                AutoTokenizer.from_pretrained(tokenizer).save_pretrained(staging)
            shutil.rmtree(directory, ignore_errors=True)
            staging.rename(directory)
            log.info("exported the model to %s", directory)
    dist.barrier()


def report_fabric(device: torch.device, metrics: TrainerMetrics, capture: Path | None) -> None:
    """Logs and exports the collectives' transport (and, on a GPU, all-reduce bandwidth)."""
    dist.barrier()  # the first collective: NCCL has chosen its transport after it
    backend, how = transport(capture)
    metrics.set_fabric(backend, how)
    if device.type == "cuda":
        bandwidth = allreduce_bus_bandwidth(device)
        metrics.allreduce_bus_bandwidth.set(bandwidth)
        log.info(
            "collectives: %s over %s; all-reduce bus bandwidth %.1f GB/s",
            backend,
            how,
            bandwidth / 1e9,
        )
    else:
        log.info("collectives: %s over %s", backend, how)


def record_memory(
    metrics: TrainerMetrics, engine: Any, step: int, rss_before_model: int, zero_stage: int
) -> None:
    """Host and device memory, and fp16's loss scale and skipped steps."""
    peak = peak_rss_bytes()
    metrics.host_memory_peak_bytes.set(peak)
    if step == 1:
        log.info(
            "host memory: peak %.0f MB over the %.0f MB before the model was built (ZeRO-%d)",
            (peak - rss_before_model) / 2**20, rss_before_model / 2**20, zero_stage,
        )  # fmt: skip
    device = device_memory_bytes()
    if device is not None:
        metrics.device_memory_allocated_bytes.set(device["allocated"])
        metrics.device_memory_reserved_bytes.set(device["reserved"])
        metrics.device_memory_peak_bytes.set(device["peak"])
    if engine.fp16_enabled():
        scaler = getattr(engine.optimizer, "loss_scaler", None)
        scale = getattr(scaler, "cur_scale", None) or getattr(engine.optimizer, "cur_scale", None)
        if scale is not None:
            metrics.loss_scale.set(float(scale))
        metrics.skipped_steps.set(engine.skipped_steps)


def train(run: RunConfig, user_deepspeed: dict[str, Any], stop: StopRequest) -> int:
    training = run.training
    rank, world_size, local_rank = distributed_env()
    is_master = rank == 0  # the one switch for side effects: logs, manifests, export
    logging.getLogger().setLevel(logging.INFO if is_master else logging.WARNING)
    train_windows = TokenWindows(Path(run.data.path), training.seq_len, run.data.dtype)
    # Checked now: a tokenizer found missing at export, after the final commit, would loop.
    tokenizer = resolve_tokenizer(Path(run.data.path), train_windows.header, run.model.path)
    val_windows = (
        TokenWindows(Path(run.data.validation_path), training.seq_len, run.data.dtype)
        if run.data.validation_path
        else None
    )
    timeout = timedelta(minutes=float(os.environ.get("DEEPSPEED_TIMEOUT", "30")))
    nccl_log = capture_nccl_choice()
    deepspeed.init_distributed(timeout=timeout, verbose=False)
    run_id = run_id_from(dict(os.environ), run.job_name)
    if run.checkpoint.resume == "Never":
        run_id = fresh_run_id(run_id)
    checkpointer = Checkpointer(
        root=Path(run.checkpoint.dir), run_id=run_id,
        attempt=int(os.environ.get(ATTEMPT_ENV, "0")), keep_last=run.checkpoint.keep_last,
        config_hash=run.config_hash(), legacy_config_hash=run.legacy_config_hash(),
        rank=rank, world_size=world_size,
        zero_stage=training.zero_stage, samples_per_step=training.samples_per_step(world_size),
        max_steps=training.max_steps, asynchronous=run.checkpoint.async_save,
    )  # fmt: skip
    checkpointer.start()
    resume = checkpointer.choose() if run.checkpoint.resume == "Auto" else None
    if resume is not None and (
        problem := schedule_change_problem(
            resume.manifest.step, resume.manifest.max_steps, training
        )
    ):
        raise ConfigError(problem)
    if resume is not None and (
        problem := batch_change_problem(
            resume.manifest.samples_per_step, resume.manifest.world_size, training, world_size
        )
    ):
        raise ConfigError(problem)
    if resume is not None and resume.manifest.world_size != world_size:
        # Another world size: the same global batch through another gradient accumulation.
        accumulation = accumulation_for(
            resume.manifest.samples_per_step, training.micro_batch_size, world_size
        )
        training = training.model_copy(update={"gradient_accumulation_steps": accumulation})
        user_deepspeed = without_batch_shape(user_deepspeed)
        checkpointer.samples_per_step = training.samples_per_step(world_size)
        log.info(
            "resuming %d ranks' checkpoint on %d ranks: gradient accumulation %d",
            resume.manifest.world_size, world_size, accumulation,
        )  # fmt: skip
    try:
        training.check_world_size(world_size)
        width = hidden_size_of(run.model) if training.zero_stage == 3 else None
        ds_config = deepspeed_config(training, world_size, user_deepspeed, hidden_size=width)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if resume is not None and resume.universal:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    rss_before_model = reset_peak_rss()
    # Before the engine partitions it: ZeRO-3 leaves each rank a flat shard.
    model = build_model(run.model, training.seed, TRAINING_DTYPES[training.precision], ds_config)
    compute_params = compute_parameters(model)
    log.info(
        "host memory: the model build peaked %.0f MB over the %.0f MB before it (ZeRO-%d)",
        (peak_rss_bytes() - rss_before_model) / 2**20, rss_before_model / 2**20,
        training.zero_stage,
    )  # fmt: skip
    parameters = sum(parameter_count(p) for p in model.parameters())
    data_vocab = train_windows.header.vocab_size
    if data_vocab is not None and data_vocab > vocab_size(model):
        raise ConfigError(
            f"the data's vocabulary ({data_vocab} tokens) exceeds the model's "
            f"({vocab_size(model)}); raise the model's vocab_size in model.config"
        )

    # Weights are identical on every rank (seeded above); dropout differs per rank.
    random.seed(training.seed + rank)
    np.random.seed(training.seed + rank)
    torch.manual_seed(training.seed + rank)
    optimizer = make_optimizer(model, training, optimizer_offloaded(ds_config))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, training=training))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    if run.model.compile:
        engine.compile()

    checkpointer.attach(engine)
    sampler = ShuffledSampler(train_windows.count, training.seed)
    step, tokens_seen = 0, 0
    if resume is not None:
        state = checkpointer.load(engine, resume, training.seed)
        step, tokens_seen = state["llmjob"]["step"], state["llmjob"]["tokensSeen"]
        sampler.load_state_dict(state["llmjob"]["sampler"])
        log.info("resumed at step %d from %s", step, resume.checkpoint)
    val_batches = (
        validation_windows(
            val_windows, training.eval_batches, training.micro_batch_size, rank, world_size
        )
        if val_windows
        else []
    )

    metrics = TrainerMetrics(run.job_name)
    port = int(os.environ.get("LLMJOB_METRICS_PORT", run.metrics_port))
    if local_rank == 0 and port:
        # Pods of the local cluster share a network namespace, one 127.x address each.
        metrics.serve(os.environ.get("LLMJOB_POD_IP", ""), port)
    metrics.max_steps.set(training.max_steps)
    metrics.world_size.set(world_size)
    metrics.attempt.set(int(os.environ.get("LLMJOB_ATTEMPT", "0")))
    metrics.step.set(step)
    metrics.resumed_step.set(step)
    metrics.tokens.inc(tokens_seen)
    exit_report = report_path() if local_rank == 0 else None
    if step:
        metrics.last_checkpoint_step.set(step)
        if exit_report is not None:
            write_exit_report(exit_report, step)
    for bad_step, _reason in checkpointer.fallbacks:
        metrics.checkpoint_fallbacks.inc()
        metrics.checkpoint_bad_step.set(bad_step)

    tokens_per_step = training.samples_per_step(world_size) * training.seq_len
    flops_per_step = (
        flops_per_token(model.config, compute_params, training.seq_len) * tokens_per_step
    )
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    peak = peak_flops_per_second(device_name, training.precision)
    if device_name is not None and peak is None and training.precision != "fp32":
        log.warning("no peak FLOP/s known for %r: no MFU; set %s", device_name, PEAK_FLOPS_ENV)
    log.info(
        "training %s: %.2fM parameters, %d ranks, %d tokens/step, steps %d..%d",
        run.job_name, parameters / 1e6, world_size, tokens_per_step, step, training.max_steps,
    )  # fmt: skip

    def save(wait: bool) -> None:
        client_state = {
            "llmjob": {
                "step": step,
                "tokensSeen": tokens_seen,
                "sampler": sampler.state_dict(),
                "worldSize": world_size,
                "configHash": run.config_hash(),
                "config": run.model_dump(mode="json", by_alias=True),
            }
        }
        checkpointer.save(step, client_state)
        if wait or not checkpointer.asynchronous:
            commit()

    def commit() -> None:
        done = checkpointer.commit_pending()
        metrics.checkpoint_duration_seconds.set(done.seconds)
        metrics.checkpoint_blocking_seconds.set(done.blocking_seconds)
        metrics.checkpoint_size_bytes.set(done.size_bytes)
        metrics.last_checkpoint_step.set(done.step)
        metrics.last_checkpoint_timestamp_seconds.set(time.time())
        if exit_report is not None:
            write_exit_report(exit_report, done.step, datetime.now(UTC))
        log.info(
            "committed %s (%.1f MB in %.2f s, %.3f s blocking)",
            done.checkpoint.name, done.size_bytes / 1e6, done.seconds, done.blocking_seconds,
        )  # fmt: skip

    report_fabric(engine.device, metrics, nccl_log)
    on_gpu = engine.device.type == "cuda"
    batch_shape = (
        training.micro_batch_size,
        training.gradient_accumulation_steps,
        rank,
        world_size,
    )
    prefetcher = BatchPrefetcher(train_windows, sampler, *batch_shape, pin_memory=on_gpu)
    interval_started, interval_steps = time.perf_counter(), 0
    while step < training.max_steps:
        step_started = time.perf_counter()
        loss_sum = torch.zeros((), device=engine.device)
        micro_steps = sampler.next_step(*batch_shape)
        batches = prefetcher.next_step(micro_steps)
        data_wait = time.perf_counter() - step_started
        for tokens in batches.tensors:
            loss = causal_lm_loss(engine, tokens.to(engine.device, non_blocking=on_gpu))
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach().float()
        step += 1
        tokens_seen += tokens_per_step
        compute_seconds = time.perf_counter() - step_started
        # One collective per step: every rank's loss, SIGTERM vote, step time, and whether it
        # has finished writing the checkpoint in flight.
        flags = [float(stop.requested), compute_seconds, float(checkpointer.written())]
        # On the loss's device (NCCL gathers device tensors only).
        mine = torch.stack([loss_sum / len(micro_steps), *(loss_sum.new_tensor(f) for f in flags)])
        ranks = [torch.zeros_like(mine) for _ in range(world_size)]
        dist.all_gather(ranks, mine)
        summary = torch.stack(ranks).cpu()
        loss_mean, stop_votes = summary[:, 0].mean().item(), summary[:, 1].sum().item()
        if checkpointer.pending is not None and summary[:, 3].sum().item() == world_size:
            commit()
        step_seconds = time.perf_counter() - step_started
        metrics.data_wait_seconds.set(data_wait)
        metrics.step_time_skew_seconds.set((summary[:, 2].max() - summary[:, 2].min()).item())
        metrics.slowest_rank.set(int(summary[:, 2].argmax()))
        record_memory(metrics, engine, step, rss_before_model, training.zero_stage)

        lr = float(scheduler.get_last_lr()[0])
        # DeepSpeed records no norm for fp32 without ZeRO: absent rather than invented.
        norm = engine.get_global_grad_norm()
        grad_norm = None if norm is None else float(norm)
        metrics.step.set(step)
        metrics.loss.set(loss_mean)
        metrics.learning_rate.set(lr)
        if grad_norm is not None:
            metrics.grad_norm.set(grad_norm)
        metrics.tokens.inc(tokens_per_step)
        metrics.tokens_per_second.set(tokens_per_step / step_seconds)
        metrics.step_duration_seconds.set(step_seconds)
        metrics.last_step_timestamp_seconds.set(time.time())
        mfu = flops_per_step / (step_seconds * peak * world_size) if peak else None
        if mfu is not None:
            metrics.set_mfu(mfu)
        interval_steps += 1
        if is_master and (step % training.log_interval_steps == 0 or step == training.max_steps):
            elapsed = time.perf_counter() - interval_started
            log.info(
                "step %d/%d | loss %.4f | lr %.3e | grad norm %s | %.0f tok/s | %.1f ms/step%s",
                step, training.max_steps, loss_mean, lr,
                "n/a" if grad_norm is None else f"{grad_norm:.3f}",
                tokens_per_step * interval_steps / elapsed, 1000 * elapsed / interval_steps,
                f" | mfu {100 * mfu:.1f}%" if mfu is not None else "",
            )  # fmt: skip
            interval_started, interval_steps = time.perf_counter(), 0
        inject_fault("after-step", step)

        last = step == training.max_steps
        if val_batches and (
            last or (training.eval_interval_steps and step % training.eval_interval_steps == 0)
        ):
            val_loss = validation_loss(engine, val_windows, val_batches)  # type: ignore[arg-type]
            metrics.validation_loss.set(val_loss)
            log.info(
                "step %d | validation loss %.4f | perplexity %.2f",
                step,
                val_loss,
                math.exp(val_loss),
            )
        if last or stop_votes or step % run.checkpoint.interval_steps == 0:
            save(wait=bool(last or stop_votes))
        if stop_votes and not last:
            log.warning("stopped by SIGTERM at step %d after committing its checkpoint", step)
            prefetcher.close()
            checkpointer.close()
            metrics.close()
            return EXIT_STOPPED_BY_SIGTERM

    prefetcher.close()
    export_dir = Path(run.checkpoint.export_dir or Path(run.checkpoint.dir) / "export")
    export_model(engine, export_dir, tokenizer, is_master)
    checkpointer.close()
    metrics.close()
    return EXIT_DONE


def one_line(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'train.json'}: {e['msg']}"
        for e in err.errors()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmjob-train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="train.json (RunConfig)")
    parser.add_argument("--deepspeed-config", type=Path, help="raw DeepSpeed config to merge")
    args = parser.parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    stop = StopRequest()
    try:
        try:
            run = RunConfig.load(args.config)
            user = json.loads(args.deepspeed_config.read_text()) if args.deepspeed_config else {}
        except ValidationError as err:
            raise ConfigError(f"{args.config}: {one_line(err)}") from err
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from err
        return train(run, user, stop)
    except ConfigError as err:
        print(f"llmjob-train: invalid configuration: {err}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    except DataError as err:
        print(f"llmjob-train: unreadable data: {err}", file=sys.stderr)
        return EXIT_UNREADABLE_DATA
    except (SupersededError, CheckpointReadError) as err:  # retryable: another attempt runs
        print(f"llmjob-train: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
