"""Exact resume after SIGKILL, torn checkpoints, and the exported model.

Single-process runs (ZeRO-2, fp32, dropout on): an interrupted run must end with the
same bits as an uninterrupted one, which needs the weights, optimizer, LR schedule,
sampler position and RNG to all come back exactly. LLMJOB_FAULT makes rank 0 SIGKILL
itself at a chosen point, so the kill lands where the test means it to.
"""

from pathlib import Path
from typing import Any

import pytest
import torch

from llmjob_operator.observe import exit_report
from llmjob_trainer.checkpoint import LATEST, MANIFEST
from llmjob_trainer.config import checkpoint_tag

from .conftest import Trainer, logged_losses, run_dir, train_command, trainer_env, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

STEPS = 8


def run_trainer(directory: Path, token_data: Path, name: str, fault: str | None = None) -> Trainer:
    # Synchronous commits: a kill after step 5 finds step 4 committed, not maybe in flight.
    config = write_config(directory, token_data, {"asyncSave": False}, maxSteps=STEPS)
    # A fresh termination-message file per run, as the kubelet makes one per container.
    message = directory / f"{name}.termination-log"
    message.write_text("")
    env = trainer_env(
        LLMJOB_TERMINATION_MESSAGE_PATH=str(message), **({"LLMJOB_FAULT": fault} if fault else {})
    )
    trainer = Trainer(train_command(config), env, directory / f"{name}.log")
    trainer.wait(timeout=600)
    return trainer


def exit_reported_step(directory: Path, name: str) -> int | None:
    """The step the run's exit report names, read as the operator reads it."""
    report = exit_report((directory / f"{name}.termination-log").read_text())
    return None if report is None else report[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, token_data: Path) -> Path:
    directory = tmp_path_factory.mktemp("uninterrupted")
    trainer = run_trainer(directory, token_data, "run")
    assert trainer.process.returncode == 0, trainer.output()[-3000:]
    assert len(logged_losses(trainer.output())) == STEPS
    return run_dir(directory / "checkpoints")


def final_state(checkpoints: Path) -> dict[str, Any]:
    final = checkpoints / checkpoint_tag(STEPS)
    model = torch.load(final / "mp_rank_00_model_states.pt", weights_only=False)
    optimizer = torch.load(final / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)
    return {
        "weights": model["module"],
        "lr_scheduler": model["lr_scheduler"],
        "global_steps": model["global_steps"],
        "sampler": model["llmjob"]["sampler"],
        "tokens": model["llmjob"]["tokensSeen"],
        "optimizer": optimizer["optimizer_state_dict"],
    }


def assert_identical(left: Any, right: Any, where: str = "state") -> None:
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and left.dtype == right.dtype, where
        assert torch.equal(left, right), f"{where} differs"
    elif isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            assert_identical(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list | tuple):
        assert len(left) == len(right), where
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_identical(a, b, f"{where}[{i}]")
    elif hasattr(left, "__dict__"):  # e.g. DeepSpeed's loss scaler, which has no __eq__
        assert type(left) is type(right), where
        assert_identical(vars(left), vars(right), where)
    else:
        assert left == right, f"{where}: {left!r} != {right!r}"


def test_killed_between_and_during_checkpoints_ends_bit_identical(
    tmp_path: Path, token_data: Path, uninterrupted: Path
) -> None:
    checkpoints = run_dir(tmp_path / "checkpoints")

    # SIGKILL after step 5: the last commit is step 4; step 5 is lost and redone.
    killed = run_trainer(tmp_path, token_data, "killed-after-step", "after-step:5")
    assert killed.process.returncode == -9, killed.output()[-3000:]
    assert (checkpoints / LATEST).read_text() == checkpoint_tag(4)
    assert exit_reported_step(tmp_path, "killed-after-step") == 4

    # Restarted, then SIGKILL inside step 6's commit: every shard written, no manifest yet.
    torn = run_trainer(tmp_path, token_data, "killed-in-commit", "before-manifest:6")
    assert torn.process.returncode == -9, torn.output()[-3000:]
    assert "resumed at step 4" in torn.output()
    assert (checkpoints / checkpoint_tag(6) / "mp_rank_00_model_states.pt").is_file()
    assert not (checkpoints / checkpoint_tag(6) / MANIFEST).exists()
    assert (checkpoints / LATEST).read_text() == checkpoint_tag(4)
    # Killed before committing anything: it still names the commit it resumed from.
    assert exit_reported_step(tmp_path, "killed-in-commit") == 4

    finished = run_trainer(tmp_path, token_data, "finished")
    assert finished.process.returncode == 0, finished.output()[-3000:]
    assert (
        f"skipping checkpoint {checkpoints / checkpoint_tag(6)}: no manifest" in finished.output()
    )
    assert "resumed at step 4" in finished.output()
    assert (checkpoints / LATEST).read_text() == checkpoint_tag(STEPS)
    assert exit_reported_step(tmp_path, "finished") == STEPS

    assert_identical(final_state(uninterrupted), final_state(checkpoints))


def test_only_the_last_committed_checkpoints_are_kept(uninterrupted: Path) -> None:
    kept = sorted(p.name for p in uninterrupted.glob("step_*"))
    assert kept == [checkpoint_tag(STEPS - 2), checkpoint_tag(STEPS)]  # keepLast 2, interval 2


def test_exported_model_loads_with_transformers_and_generates(uninterrupted: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = uninterrupted.parents[1] / "export"
    assert (export / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    trained = torch.load(
        uninterrupted / checkpoint_tag(STEPS) / "mp_rank_00_model_states.pt", weights_only=False
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained["module"][name]), name
    prompt = tokenizer("def ", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 12)
    text = tokenizer.decode(generated[0])
    assert isinstance(text, str) and text.startswith("def ")
