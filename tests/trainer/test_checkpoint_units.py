"""The commit protocol's pure parts and file primitives, with plain asserts on real files."""

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from llmjob_trainer.checkpoint import (
    BAD_MARKER,
    MANIFEST,
    CheckpointReadError,
    Manifest,
    RankReport,
    accumulation_for,
    check_reports,
    expected_files,
    inspect,
    mark_bad,
    newest_attempt,
    newest_committed,
    register_attempt,
    run_id_from,
    stale,
)
from llmjob_trainer.config import RunConfig, TrainConfig, checkpoint_tag
from llmjob_trainer.durable import FileRecord, file_crc32, publish, rename_replaces, write_durably
from llmjob_trainer.errors import ConfigError
from llmjob_trainer.train import batch_change_problem, lr_at, schedule_change_problem
from llmjob_trainer.writer import host_copy


def records(rank: int, zero_stage: int = 2) -> list[FileRecord]:
    return [FileRecord(name, 1, 0) for name in sorted(expected_files(zero_stage, rank))]


def test_reports_must_cover_every_ranks_expected_files() -> None:
    complete = [RankReport(r, records(r), None) for r in range(3)]
    assert check_reports(complete, 3, zero_stage=2) == []
    assert expected_files(2, 1) == {
        "rng_rank_00001.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }
    assert "mp_rank_00_model_states.pt" in expected_files(2, 0)
    assert "zero_pp_rank_2_mp_rank_00_model_states.pt" in expected_files(3, 2)

    missing_rank = complete[:2]
    assert check_reports(missing_rank, 3, 2) == ["rank 2 sent no report"]
    short = [*complete[:2], RankReport(2, records(2)[:1], None)]
    assert check_reports(short, 3, 2) == [
        "rank 2 did not write zero_pp_rank_2_mp_rank_00_optim_states.pt"
    ]
    failed = [*complete[:2], RankReport(2, records(2), "OSError(28, 'No space left')")]
    assert "rank 2 failed to write" in check_reports(failed, 3, 2)[0]
    twice = [*complete[:2], RankReport(2, records(2) + records(1)[:1], None)]
    assert check_reports(twice, 3, 2) == ["rng_rank_00001.pt reported by ranks 1 and 2"]


def commit(run_dir: Path, step: int, content: bytes = b"12345") -> Path:
    checkpoint = run_dir / checkpoint_tag(step)
    checkpoint.mkdir(parents=True)
    (checkpoint / "a.pt").write_bytes(content)
    record = FileRecord("a.pt", len(content), zlib.crc32(content))
    manifest = Manifest("run", 1, step, 2, 8, 100, "abc", {"a.pt": record})
    (checkpoint / MANIFEST).write_text(json.dumps(manifest.to_json()))
    return checkpoint


def test_a_read_error_is_never_taken_for_a_torn_checkpoint(tmp_path: Path) -> None:
    commit(tmp_path, 2)
    unreadable = commit(tmp_path, 4)
    (unreadable / "a.pt").unlink()
    (unreadable / "a.pt").mkdir()  # stat works, so this one is judged by size: not a read error
    assert "not 5 bytes" in str(inspect(unreadable))
    newest = commit(tmp_path, 6)
    (newest / MANIFEST).unlink()
    (newest / MANIFEST).mkdir()  # reading it fails with EISDIR: an I/O error, not a torn commit
    with pytest.raises(CheckpointReadError, match="cannot read checkpoint"):
        inspect(newest)
    with pytest.raises(CheckpointReadError):
        newest_committed(tmp_path, log_skips=False)
    with pytest.raises(CheckpointReadError):
        stale(tmp_path, keep_last=1)  # pruning gives up rather than deleting step 6


def test_a_checkpoint_marked_bad_is_skipped_and_never_pruned(tmp_path: Path) -> None:
    commit(tmp_path, 2)
    commit(tmp_path, 4)
    bad = commit(tmp_path, 6)
    mark_bad(bad, "a.pt has crc32 00000000")
    assert inspect(bad) == "marked bad (a.pt has crc32 00000000)"
    assert (bad / MANIFEST).is_file() and (bad / BAD_MARKER).is_file()
    found = newest_committed(tmp_path, log_skips=False)
    assert found is not None and found[1].step == 4
    assert [p.name for p in stale(tmp_path, keep_last=1)] == [checkpoint_tag(2)]


def test_fence_remembers_the_newest_attempt(tmp_path: Path) -> None:
    assert register_attempt(tmp_path, 3) == 3
    assert register_attempt(tmp_path, 5) == 5
    assert register_attempt(tmp_path, 4) == 5  # a late, superseded attempt learns it
    assert newest_attempt(tmp_path) == 5


def test_run_id_comes_from_the_environment_or_the_job_name() -> None:
    assert run_id_from({"LLMJOB_RUN_ID": "0f9e-uid"}, "job") == "0f9e-uid"
    assert run_id_from({}, "job") == "job"
    with pytest.raises(ConfigError, match="run id"):
        run_id_from({"LLMJOB_RUN_ID": "../escape"}, "job")


def test_gradient_accumulation_keeps_the_global_batch_or_says_why_not() -> None:
    assert accumulation_for(12, micro_batch_size=1, world_size=3) == 4
    assert accumulation_for(12, micro_batch_size=2, world_size=2) == 3
    with pytest.raises(ConfigError, match="does not divide"):
        accumulation_for(12, micro_batch_size=2, world_size=4)


def test_the_batch_shape_is_checked_as_the_global_batch_not_hashed() -> None:
    def run(**training: Any) -> RunConfig:
        return RunConfig.model_validate(
            {
                "model": {"preset": "tiny"},
                "data": {"path": "/d/tokens.bin"},
                "checkpoint": {"dir": "/c"},
                "training": {"microBatchSize": 2, "seqLen": 64, **training},
            }
        )

    two_ranks = run(gradientAccumulationSteps=2, globalBatchSize=8)
    # workers 2 -> 1 with globalBatchSize set: the API asks for accumulation 4 with it.
    one_rank = run(gradientAccumulationSteps=4, globalBatchSize=8)
    assert one_rank.config_hash() == two_ranks.config_hash()
    assert one_rank.legacy_config_hash() != two_ranks.legacy_config_hash()
    assert run(seqLen=128).config_hash() != run().config_hash()
    # What the hash no longer covers is checked for what it means.
    assert batch_change_problem(8, 2, two_ranks.training, 2) is None
    assert batch_change_problem(8, 2, one_rank.training, 1) is None  # accumulation follows
    doubled = batch_change_problem(8, 2, one_rank.training, 2)
    assert doubled is not None and "global batch of 8" in doubled and "is 16" in doubled


def test_which_resumes_with_another_max_steps_are_exact() -> None:
    cosine = TrainConfig(max_steps=100, warmup_steps=10)
    assert schedule_change_problem(50, 100, cosine) is None
    assert schedule_change_problem(10, 200, cosine) is None  # still warming up
    assert "restore maxSteps" in str(schedule_change_problem(50, 200, cosine))
    wsd = TrainConfig(max_steps=100, warmup_steps=10, lr_schedule="wsd", decay_steps=20)
    assert schedule_change_problem(50, 200, wsd) is None  # both decays start after step 50
    assert schedule_change_problem(90, 200, wsd) is not None  # the old decay had begun
    assert lr_at(50, wsd) == wsd.learning_rate
    assert lr_at(99, wsd) < lr_at(81, wsd) < lr_at(80, wsd) == wsd.learning_rate
    longer = wsd.model_copy(update={"max_steps": 200})
    assert [lr_at(s, wsd) for s in range(80)] == [lr_at(s, longer) for s in range(80)]


def test_durable_writes_report_the_checksum_of_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    record = write_durably(path, "state.pt", lambda out: torch.save({"w": torch.ones(1000)}, out))
    assert record.size == path.stat().st_size and record.crc32 == file_crc32(path)
    assert torch.equal(torch.load(path)["w"], torch.ones(1000))


def test_publish_replaces_with_or_without_rename(tmp_path: Path) -> None:
    assert rename_replaces(tmp_path)
    for rename_works in (True, False):
        publish(tmp_path / "latest", "step_00000002", rename_works)
        publish(tmp_path / "latest", "step_00000004", rename_works)
        assert (tmp_path / "latest").read_text() == "step_00000004"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_the_background_write_reads_a_snapshot_not_the_live_state() -> None:
    live: dict[str, Any] = {"module": {"w": torch.zeros(3)}, "steps": [torch.ones(2)], "lr": 0.1}
    snapshot = host_copy(live)
    live["module"]["w"].add_(1)
    live["steps"][0].mul_(5)
    assert torch.equal(snapshot["module"]["w"], torch.zeros(3))
    assert torch.equal(snapshot["steps"][0], torch.ones(2)) and snapshot["lr"] == 0.1


def test_fallbacks_are_exported_for_the_operator() -> None:
    from prometheus_client import generate_latest

    from llmjob_trainer.metrics import TrainerMetrics

    metrics = TrainerMetrics("j")
    metrics.checkpoint_fallbacks.inc()
    metrics.checkpoint_bad_step.set(8)
    metrics.resumed_step.set(4)
    text = generate_latest(metrics.registry).decode()
    assert 'llmjob_trainer_checkpoint_fallbacks_total{job_name="j"} 1.0' in text
    assert 'llmjob_trainer_checkpoint_bad_step{job_name="j"} 8.0' in text
    assert 'llmjob_trainer_resumed_step{job_name="j"} 4.0' in text
