"""The pure parts of the trainer, with plain asserts: no process, no DeepSpeed engine."""

import json
from pathlib import Path

import numpy as np
import pytest

from llmjob_trainer.checkpoint import (
    LATEST,
    MANIFEST,
    Manifest,
    fault_armed,
    inspect,
    newest_committed,
    stale,
)
from llmjob_trainer.config import TrainConfig, checkpoint_tag
from llmjob_trainer.data import ShuffledSampler, TokenHeader, TokenWindows, write_tokens
from llmjob_trainer.durable import FileRecord, publish
from llmjob_trainer.errors import ConfigError, DataError
from llmjob_trainer.launch import HostfileError, check_node_rank, read_hostfile, same_host
from llmjob_trainer.prepare import BYTE_EOS, byte_encoder, byte_level_tokenizer
from llmjob_trainer.train import lr_at


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor() -> None:
    training = TrainConfig(
        max_steps=110, warmup_steps=10, learning_rate=1e-3, min_learning_rate=1e-4
    )
    warmup = [lr_at(step, training) for step in range(10)]
    assert warmup == sorted(warmup) and warmup[0] == pytest.approx(1e-3 / 11)
    assert lr_at(10, training) == pytest.approx(1e-3)
    assert lr_at(60, training) == pytest.approx((1e-3 + 1e-4) / 2)
    decay = [lr_at(step, training) for step in range(10, 111)]
    assert decay == sorted(decay, reverse=True)
    assert lr_at(110, training) == pytest.approx(1e-4)
    assert lr_at(500, training) == pytest.approx(1e-4)


def test_sampler_shards_each_global_batch_across_ranks_without_overlap() -> None:
    world, micro, accumulation = 3, 2, 2
    samplers = [ShuffledSampler(window_count=50, seed=7) for _ in range(world)]
    seen: list[int] = []
    for _step in range(4):
        per_rank = [
            s.next_step(micro, accumulation, rank, world) for rank, s in enumerate(samplers)
        ]
        windows = [w for micro_steps in per_rank for batch in micro_steps for w in batch]
        assert len(windows) == len(set(windows)) == world * micro * accumulation
        seen.extend(windows)
    assert samplers[0].position == 4 * world * micro * accumulation
    # Four steps of 12 samples cover the 50-window first epoch without repeats.
    assert len(set(seen)) == len(seen) == 48


def test_sampler_is_a_function_of_seed_and_position() -> None:
    first = ShuffledSampler(window_count=20, seed=1)
    steps = [first.next_step(2, 1, 0, 1) for _ in range(30)]  # crosses two epochs
    resumed = ShuffledSampler(window_count=20, seed=1)
    resumed.load_state_dict({"position": 2 * 17, "windowCount": 20, "seed": 1})
    assert [resumed.next_step(2, 1, 0, 1) for _ in range(13)] == steps[17:]
    other_seed = ShuffledSampler(window_count=20, seed=2)
    assert [other_seed.next_step(2, 1, 0, 1) for _ in range(10)] != steps[:10]
    with pytest.raises(ConfigError, match="windows"):
        ShuffledSampler(window_count=21, seed=1).load_state_dict(first.state_dict())


def test_token_windows_read_what_was_written(tmp_path: Path) -> None:
    tokens = np.arange(100) % 300
    write_tokens(tmp_path / "t.bin", tokens, TokenHeader("uint16", 100, 300, None, None))
    windows = TokenWindows(tmp_path / "t.bin", seq_len=9, dtype=None)
    assert windows.count == 11
    assert windows.window(2).tolist() == tokens[18:28].tolist()
    with pytest.raises(ConfigError, match="uint32"):
        TokenWindows(tmp_path / "t.bin", seq_len=9, dtype="uint32")
    (tmp_path / "t.bin").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="promises"):
        TokenWindows(tmp_path / "t.bin", seq_len=9, dtype=None)
    with pytest.raises(DataError, match="does not exist"):
        TokenWindows(tmp_path / "missing.bin", seq_len=9, dtype=None)


def test_byte_level_tokenizer_matches_the_byte_encoder() -> None:
    text = "def f(x):\n\treturn 'héllo'  # ok"
    tokenizer = byte_level_tokenizer()
    assert tokenizer(text)["input_ids"] == byte_encoder(text)[:-1]
    assert byte_encoder(text)[-1] == BYTE_EOS == tokenizer.eos_token_id
    assert tokenizer.decode(byte_encoder(text)[:-1]) == text


def commit(directory: Path, step: int, files: dict[str, bytes]) -> Path:
    checkpoint = directory / checkpoint_tag(step)
    checkpoint.mkdir(parents=True)
    for name, content in files.items():
        (checkpoint / name).write_bytes(content)
    records = {name: FileRecord(name, len(content), 0) for name, content in files.items()}
    manifest = Manifest("run", 1, step, 2, 8, 100, "abc", records)
    (checkpoint / MANIFEST).write_text(json.dumps(manifest.to_json()))
    return checkpoint


def test_torn_checkpoints_are_never_taken_as_committed(tmp_path: Path) -> None:
    commit(tmp_path, 2, {"a.pt": b"12345"})
    shortened = commit(tmp_path, 4, {"a.pt": b"12345"})
    (shortened / "a.pt").write_bytes(b"12")
    no_manifest = tmp_path / checkpoint_tag(6)
    no_manifest.mkdir()
    (no_manifest / "a.pt").write_bytes(b"12345")
    garbled = commit(tmp_path, 8, {"a.pt": b"1"})
    (garbled / MANIFEST).write_text("{")
    assert inspect(no_manifest) == "no manifest"
    assert "unreadable" in str(inspect(garbled))
    assert "not 5 bytes" in str(inspect(shortened))
    found = newest_committed(tmp_path, log_skips=False)
    assert found is not None and found[0].name == checkpoint_tag(2) and found[1].step == 2


def test_pruning_keeps_the_newest_committed_and_newer_torn_ones(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        commit(tmp_path, step, {"a.pt": b"x"})
    (tmp_path / checkpoint_tag(5)).mkdir()  # torn, older than the newest commit: garbage
    (tmp_path / checkpoint_tag(10)).mkdir()  # torn, newer: the next commit of step 10 replaces it
    doomed = {p.name for p in stale(tmp_path, keep_last=2)}
    assert doomed == {checkpoint_tag(2), checkpoint_tag(4), checkpoint_tag(5)}


def test_latest_is_replaced_atomically(tmp_path: Path) -> None:
    publish(tmp_path / LATEST, checkpoint_tag(2), rename_works=True)
    publish(tmp_path / LATEST, checkpoint_tag(4), rename_works=True)
    assert (tmp_path / LATEST).read_text() == checkpoint_tag(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]


def test_hostfile_is_parsed_by_deepspeed_and_the_pod_must_sit_at_its_index(
    tmp_path: Path,
) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("j-worker-0.j.ns.svc slots=8\nj-worker-1.j.ns.svc slots=8\n")
    hosts = read_hostfile(hostfile)
    assert hosts == [("j-worker-0.j.ns.svc", 8), ("j-worker-1.j.ns.svc", 8)]
    check_node_rank(hosts, 1, "j-worker-1")
    with pytest.raises(HostfileError, match="position 0"):
        check_node_rank(hosts, 0, "j-worker-1")
    with pytest.raises(HostfileError, match="outside"):
        check_node_rank(hosts, 2, "j-worker-2")
    assert same_host("127.0.0.2", "127.0.0.2") and not same_host("127.0.0.1", "127.0.0.2")
    hostfile.write_text("j-worker-0 slots=8\nj-worker-0 slots=8\n")
    with pytest.raises(HostfileError, match="multiple entries"):
        read_hostfile(hostfile)
    hostfile.write_text("j-worker-0 gpus=8\n")
    with pytest.raises(HostfileError, match="bad entry"):
        read_hostfile(hostfile)


def test_fault_injection_can_be_limited_to_one_attempt() -> None:
    assert fault_armed("before-manifest:40", "before-manifest", 40, "3", 0)
    assert fault_armed("before-manifest:40@1", "before-manifest", 40, "1", 0)
    assert not fault_armed("before-manifest:40@1", "before-manifest", 40, "2", 0)
    assert not fault_armed("before-manifest:40@1", "after-step", 40, "1", 0)
    assert not fault_armed("", "before-manifest", 40, None, 0)
    assert not fault_armed("before-manifest:40", "before-manifest", 40, None, 1)
    assert fault_armed("before-report:6#1", "before-report", 6, None, 1)
    assert fault_armed("before-report:6@2#1", "before-report", 6, "2", 1)
    assert not fault_armed("before-report:6#1", "before-report", 6, None, 0)
