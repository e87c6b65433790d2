"""The prefetch thread reads exactly what the sampler chooses; cores bind per rank on request."""

from pathlib import Path

import numpy as np
import pytest
import torch

from llmjob_trainer.data import (
    BatchPrefetcher,
    ShuffledSampler,
    TokenHeader,
    TokenWindows,
    write_tokens,
)
from llmjob_trainer.errors import DataError
from llmjob_trainer.fabric import nccl_transport
from llmjob_trainer.launch import core_binding, launcher_command


def windows(tmp_path: Path, count: int = 1000) -> TokenWindows:
    tokens = np.arange(count) % 300
    write_tokens(tmp_path / "t.bin", tokens, TokenHeader("uint16", count, 300, None, None))
    return TokenWindows(tmp_path / "t.bin", seq_len=9, dtype=None)


def test_prefetched_batches_are_the_samplers_windows_from_any_position(tmp_path: Path) -> None:
    data = windows(tmp_path)
    sampler = ShuffledSampler(data.count, seed=7)
    sampler.position = 37  # as after a resume; crosses an epoch boundary below
    prefetcher = BatchPrefetcher(data, sampler, 3, 2, 1, 2, pin_memory=False)
    try:
        for _ in range(30):
            chosen = sampler.next_step(3, 2, 1, 2)
            step = prefetcher.next_step(chosen)
            assert step.indices == chosen
            for indices, tensor in zip(chosen, step.tensors, strict=True):
                expected = np.stack([data.window(i) for i in indices])
                assert tensor.dtype == torch.int64
                assert torch.equal(tensor, torch.from_numpy(expected))
    finally:
        prefetcher.close()


def test_a_prefetcher_out_of_step_with_the_sampler_is_caught(tmp_path: Path) -> None:
    data = windows(tmp_path)
    sampler = ShuffledSampler(data.count, seed=7)
    prefetcher = BatchPrefetcher(data, sampler, 2, 1, 0, 1, pin_memory=False)
    try:
        sampler.next_step(2, 1, 0, 1)  # the loop skipped a step the prefetcher did not
        with pytest.raises(RuntimeError, match="disagree"):
            prefetcher.next_step(sampler.next_step(2, 1, 0, 1))
    finally:
        prefetcher.close()


def test_a_read_error_in_the_thread_surfaces_as_unreadable_data(tmp_path: Path) -> None:
    data = windows(tmp_path)
    sampler = ShuffledSampler(data.count + 50, seed=7)  # windows past the end of the file
    prefetcher = BatchPrefetcher(data, sampler, 64, 1, 0, 1, pin_memory=False)
    try:
        with pytest.raises(DataError, match="reading batches"):
            for _ in range(10):
                prefetcher.next_step(sampler.next_step(64, 1, 0, 1))
    finally:
        prefetcher.close()


def test_cores_are_bound_to_ranks_only_when_asked_and_only_within_the_pods_cores() -> None:
    assert core_binding({}, {0, 1, 2, 3}) == []
    binding = core_binding({"LLMJOB_BIND_CORES": "1"}, {8, 9, 10, 11})
    assert binding == ["--bind_cores_to_rank", "--bind_core_list", "8,9,10,11"]
    command = launcher_command(Path("h"), 0, "a", 1, ["-m", "llmjob_trainer.train"], binding)
    assert command[command.index("--bind_core_list") + 1] == "8,9,10,11"
    assert command.index("--bind_cores_to_rank") < command.index("--module")


def test_nccls_transport_choice_is_read_from_its_debug_log() -> None:
    log = (
        "node-0:123:456 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB\n"
        "node-0:123:456 [0] NCCL INFO Using network IB\n"
        "node-0:123:456 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read\n"
        "node-0:123:456 [0] NCCL INFO Channel 01/0 : 0[0] -> 1[1] via P2P/CUMEM/read\n"
    )
    assert nccl_transport(log) == "IB; intra-node P2P/CUMEM"
    fallback = (
        "x NCCL INFO NET/Socket : Using [0]eth0:10.0.0.1<0>\nx NCCL INFO Using network Socket\n"
    )
    assert nccl_transport(fallback) == "Socket"
    assert nccl_transport("") == "no network"
