"""The commit protocol under faults, with real DeepSpeed ranks: torn, corrupted, foreign and
superseded checkpoints, and a SIGKILL while an asynchronous write is in flight."""

import shutil
import time
from pathlib import Path

import pytest
import torch

from llmjob_trainer.checkpoint import BAD_MARKER, LATEST, MANIFEST, Manifest, inspect
from llmjob_trainer.config import checkpoint_tag

from .conftest import (
    Trainer,
    free_port,
    launch_command,
    run_dir,
    train_command,
    trainer_env,
    write_config,
)
from .test_resume import assert_identical, final_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

STEPS = 8
SYNC = {"asyncSave": False, "keepLast": 3}


def run_alone(directory: Path, config: Path, name: str, **env: str) -> Trainer:
    trainer = Trainer(train_command(config), trainer_env(**env), directory / f"{name}.log")
    trainer.wait(timeout=600)
    return trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, token_data: Path) -> Path:
    directory = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(directory, token_data, SYNC, maxSteps=STEPS)
    trainer = run_alone(directory, config, "run")
    assert trainer.process.returncode == 0, trainer.output()[-3000:]
    return run_dir(directory / "checkpoints")


def test_a_rank_killed_before_its_report_leaves_a_torn_checkpoint_that_resume_skips(
    tmp_path: Path, token_data: Path
) -> None:
    """One pod, two ranks: rank 1 dies after writing its shard of step 4, before reporting."""
    config = write_config(tmp_path, token_data, SYNC, maxSteps=STEPS)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=2\n")

    def launch(name: str, **env: str) -> Trainer:
        command = launch_command(hostfile, config, "127.0.0.1", free_port())
        trainer = Trainer(command, trainer_env(**env), tmp_path / f"{name}.log")
        trainer.wait(timeout=600)
        return trainer

    checkpoints = run_dir(tmp_path / "checkpoints")
    killed = launch("killed", LLMJOB_FAULT="before-report:4#1")
    assert killed.process.returncode != 0, killed.output()[-3000:]
    torn = checkpoints / checkpoint_tag(4)
    assert (torn / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    assert not (torn / MANIFEST).exists()
    assert (checkpoints / LATEST).read_text() == checkpoint_tag(2)

    resumed = launch("resumed")
    output = resumed.output()
    assert resumed.process.returncode == 0, output[-3000:]
    assert f"skipping checkpoint {torn}: no manifest" in output
    assert "resumed at step 2" in output
    manifest = inspect(checkpoints / checkpoint_tag(STEPS))
    assert isinstance(manifest, Manifest) and manifest.world_size == 2
    assert {"rng_rank_00001.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(manifest.files)


def test_a_corrupted_shard_is_marked_bad_and_the_run_falls_back_to_the_previous_commit(
    tmp_path: Path, token_data: Path, uninterrupted: Path
) -> None:
    checkpoints = run_dir(tmp_path / "checkpoints")
    shutil.copytree(uninterrupted, checkpoints)
    corrupted = checkpoints / checkpoint_tag(STEPS)
    shard = corrupted / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size: only the checksum can tell
    shard.write_bytes(bytes(content))

    config = write_config(tmp_path, token_data, SYNC, maxSteps=STEPS)
    trainer = run_alone(tmp_path, config, "fallback")
    output = trainer.output()
    assert trainer.process.returncode == 0, output[-3000:]
    assert f"marking checkpoint {corrupted} bad: {shard.name} has crc32" in output
    assert f"falling back from step {STEPS} to the previous commit" in output
    assert "resumed at step 6" in output

    # The bad one is kept (moved aside when step 8 was trained again), marker and all.
    (aside,) = checkpoints.glob(f"{checkpoint_tag(STEPS)}.bad-*")
    assert (aside / BAD_MARKER).is_file() and (aside / MANIFEST).is_file()
    assert (checkpoints / LATEST).read_text() == checkpoint_tag(STEPS)
    again = torch.load(corrupted / "mp_rank_00_model_states.pt", weights_only=False)
    first = torch.load(aside / "mp_rank_00_model_states.pt", weights_only=False)
    assert_identical(first["module"], again["module"], "weights")  # step 6 -> 8 redone exactly


def tree(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_runs_resume_and_prune_only_their_own_checkpoints_and_never_deletes_nothing(
    tmp_path: Path, token_data: Path
) -> None:
    config = write_config(tmp_path, token_data, {"keepLast": 1}, maxSteps=4)
    root = tmp_path / "checkpoints"
    first = run_alone(tmp_path, config, "run-a", LLMJOB_RUN_ID="run-a")
    assert first.process.returncode == 0, first.output()[-3000:]
    before = tree(run_dir(root, "run-a"))
    assert sorted(p.name for p in run_dir(root, "run-a").glob("step_*")) == [checkpoint_tag(4)]

    # A re-created job (another UID) on the same claim trains anew and leaves run-a alone.
    other = run_alone(tmp_path, config, "run-b", LLMJOB_RUN_ID="run-b")
    assert other.process.returncode == 0, other.output()[-3000:]
    assert "resumed" not in other.output()
    assert (run_dir(root, "run-b") / LATEST).read_text() == checkpoint_tag(4)

    never = write_config(tmp_path, token_data, {"keepLast": 1, "resume": "Never"}, maxSteps=4)
    fresh = run_alone(tmp_path, never, "never", LLMJOB_RUN_ID="run-a")
    assert fresh.process.returncode == 0, fresh.output()[-3000:]
    assert "resumed" not in fresh.output()
    (fresh_run,) = (root / "runs").glob("run-a.fresh-*")
    assert (fresh_run / LATEST).read_text() == checkpoint_tag(4)
    assert tree(run_dir(root, "run-a")) == before

    config = write_config(tmp_path, token_data, {"keepLast": 1}, maxSteps=4)  # Auto again
    again = run_alone(tmp_path, config, "run-a-again", LLMJOB_RUN_ID="run-a")
    assert again.process.returncode == 0, again.output()[-3000:]
    assert "resumed at step 4" in again.output()


def wait_for_line(trainer: Trainer, text: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while text not in trainer.output():
        assert trainer.process.poll() is None, trainer.output()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in time:\n{trainer.output()[-3000:]}"
        time.sleep(0.2)


def test_a_superseded_attempt_never_commits_over_the_new_one(
    tmp_path: Path, token_data: Path, trainers: list[Trainer]
) -> None:
    """Attempt 1 stalls inside step 4's commit (a partitioned node, say) while attempt 2
    starts and resumes; released, attempt 1 finds the fence moved and commits nothing."""
    config = write_config(tmp_path, token_data, SYNC, maxSteps=STEPS)
    release = tmp_path / "release"
    old_env = trainer_env(
        LLMJOB_ATTEMPT="1", LLMJOB_FAULT="hold-before-fence:4@1", LLMJOB_FAULT_RELEASE=str(release)
    )
    old = Trainer(train_command(config), old_env, tmp_path / "attempt-1.log")
    trainers.append(old)
    wait_for_line(old, "holding at hold-before-fence of step 4")

    new = Trainer(
        train_command(config), trainer_env(LLMJOB_ATTEMPT="2"), tmp_path / "attempt-2.log"
    )
    trainers.append(new)
    wait_for_line(new, "resumed at step 2")
    release.touch()
    assert old.wait(timeout=300) == 1, old.output()[-3000:]
    assert "superseded by attempt 2: attempt 1 may not commit" in old.output()
    assert new.wait(timeout=600) == 0, new.output()[-3000:]

    checkpoints = run_dir(tmp_path / "checkpoints")
    assert (checkpoints / LATEST).read_text() == checkpoint_tag(STEPS)
    for step in (4, 6, STEPS):
        manifest = inspect(checkpoints / checkpoint_tag(step))
        assert isinstance(manifest, Manifest) and manifest.attempt == 2, step


def test_sigkill_during_an_async_write_is_never_taken_as_committed(
    tmp_path: Path, token_data: Path, uninterrupted: Path
) -> None:
    config = write_config(tmp_path, token_data, {"asyncSave": True, "keepLast": 3}, maxSteps=STEPS)
    checkpoints = run_dir(tmp_path / "checkpoints")
    killed = run_alone(tmp_path, config, "killed", LLMJOB_FAULT="during-write:4")
    assert killed.process.returncode == -9, killed.output()[-3000:]
    assert "SIGKILL at during-write of step 4" in killed.output()
    assert isinstance(inspect(checkpoints / checkpoint_tag(4)), str)
    assert (checkpoints / LATEST).read_text() == checkpoint_tag(2)

    resumed = run_alone(tmp_path, config, "resumed")
    output = resumed.output()
    assert resumed.process.returncode == 0, output[-3000:]
    assert f"skipping checkpoint {checkpoints / checkpoint_tag(4)}" in output
    assert "resumed at step 2" in output
    # Asynchronous commits change nothing a step computes: bit-identical to the sync run.
    assert_identical(final_state(uninterrupted), final_state(checkpoints))
