"""Real ranks through the real DeepSpeed launcher (no ssh), as worker pods run them."""

import json
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from llmjob_trainer.checkpoint import LATEST, MANIFEST

from .conftest import (
    Trainer,
    free_port,
    launch_command,
    logged_losses,
    run_dir,
    train_command,
    trainer_env,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
# Warmup, constant, then a decay over the last 2 steps: maxSteps may change on resume.
WSD_DECAY_2: dict[str, Any] = {"lrSchedule": "wsd", "decaySteps": 2}


def test_two_nodes_with_zero2_reduce_the_loss(
    tmp_path: Path, token_data: Path, trainers: list[Trainer]
) -> None:
    """Two "pods" on 127.0.0.1 and 127.0.0.2, one rank each, a two-line hostfile."""
    config = write_config(tmp_path, token_data, maxSteps=30, warmupSteps=3)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
    port = free_port()
    for index, host in enumerate(["127.0.0.1", "127.0.0.2"]):
        env = trainer_env(LLMJOB_ATTEMPT="1")
        command = launch_command(hostfile, config, host, port, node_rank=index)
        trainers.append(Trainer(command, env, tmp_path / f"worker-{index}.log"))
    codes = [trainer.wait(timeout=600) for trainer in trainers]
    output = trainers[0].output()
    assert codes == [0, 0], output[-3000:] + trainers[1].output()[-3000:]
    assert "2 ranks" in output and "dist_world_size=2" in output
    losses = logged_losses(output)
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, losses
    assert (run_dir(tmp_path / "checkpoints") / LATEST).read_text() == "step_00000030"


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r'^(llmjob_trainer_\w+)\{job_name="test"\} (\S+)$', line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def wait_for_step(port: int, trainer: Trainer, step: float, deadline: float) -> dict[str, float]:
    while time.monotonic() < deadline:
        assert trainer.process.poll() is None, trainer.output()[-3000:]
        try:
            samples = scrape(port)
        except OSError:
            samples = {}
        if samples.get("llmjob_trainer_step", -1) >= step:
            return samples
        time.sleep(0.5)
    raise AssertionError(f"no step {step} on /metrics in time:\n{trainer.output()[-3000:]}")


def test_metrics_advance_and_sigterm_commits_exits_143_and_resumes(
    tmp_path: Path, token_data: Path, trainers: list[Trainer]
) -> None:
    """One pod with two ranks: /metrics during training, then SIGTERM to the launcher."""
    config = write_config(tmp_path, token_data, maxSteps=100_000, warmupSteps=3, **WSD_DECAY_2)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=2\n")
    metrics_port, master_port = free_port(), free_port()
    env = trainer_env(LLMJOB_METRICS_PORT=str(metrics_port), LLMJOB_POD_IP="127.0.0.1")
    command = launch_command(hostfile, config, "127.0.0.1", master_port)
    trainer = Trainer(command, env, tmp_path / "first.log")
    trainers.append(trainer)

    deadline = time.monotonic() + 600
    early = wait_for_step(metrics_port, trainer, 3, deadline)
    later = wait_for_step(metrics_port, trainer, early["llmjob_trainer_step"] + 5, deadline)
    assert later["llmjob_trainer_tokens_total"] > early["llmjob_trainer_tokens_total"] > 0
    assert (
        later["llmjob_trainer_last_step_timestamp_seconds"]
        > early["llmjob_trainer_last_step_timestamp_seconds"]
    )
    assert later["llmjob_trainer_tokens_per_second"] > 0
    assert 0 < later["llmjob_trainer_loss"] < early["llmjob_trainer_loss"] + 1
    assert later["llmjob_trainer_world_size"] == 2
    assert "llmjob_trainer_mfu_ratio" not in later  # CPU: no peak to divide by
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5) as health:
        assert health.status == 200

    trainer.process.send_signal(signal.SIGTERM)
    assert trainer.wait(timeout=300) == 143, trainer.output()[-3000:]
    checkpoints = run_dir(tmp_path / "checkpoints")
    tag = (checkpoints / LATEST).read_text()
    manifest = json.loads((checkpoints / tag / MANIFEST).read_text())
    stopped_at = manifest["step"]
    assert stopped_at >= later["llmjob_trainer_step"] and manifest["worldSize"] == 2
    assert f"stopped by SIGTERM at step {stopped_at}" in trainer.output()

    # The restarted gang resumes there. Under wsd, maxSteps may change before the decay.
    config = write_config(
        tmp_path, token_data, maxSteps=stopped_at + 3, warmupSteps=3, **WSD_DECAY_2
    )
    resumed = Trainer(command, env, tmp_path / "resumed.log")
    trainers.append(resumed)
    assert resumed.wait(timeout=300) == 0, resumed.output()[-3000:]
    assert f"resumed at step {stopped_at}" in resumed.output()
    assert len(logged_losses(resumed.output())) == 3
    assert (checkpoints / LATEST).read_text() == f"step_{stopped_at + 3:08d}"


def test_bad_config_missing_data_and_bad_hostfile_fail_permanently(
    tmp_path: Path, token_data: Path
) -> None:
    config = write_config(tmp_path, token_data)
    raw = json.loads(config.read_text())

    def run(argv: list[str]) -> tuple[int, str]:
        trainer = Trainer(argv, trainer_env(), tmp_path / "out.log")
        return trainer.wait(timeout=300), trainer.output()

    raw["training"]["zeroStage"] = 7
    config.write_text(json.dumps(raw))
    code, output = run(train_command(config))
    assert code == 2, output
    assert "llmjob-train: invalid configuration:" in output and "training.zeroStage" in output

    raw["training"]["zeroStage"] = 2
    raw["data"]["path"] = str(tmp_path / "nowhere.bin")
    config.write_text(json.dumps(raw))
    code, output = run(train_command(config))
    assert code == 3, output
    assert f"llmjob-train: unreadable data: token file {tmp_path / 'nowhere.bin'}" in output

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\n")
    code, output = run(launch_command(hostfile, config, "127.0.0.9", free_port()))
    assert code == 2, output
    assert "llmjob-launch: invalid hostfile:" in output and "appears nowhere" in output


def test_a_user_command_runs_under_the_same_contract_and_its_exit_code_comes_back(
    tmp_path: Path, token_data: Path
) -> None:
    """`llmjob-launch ... -- cmd`: each rank gets the rendezvous env; a failing rank's
    exit code (here 7, retryable) is the pod's exit code."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=2\n")
    script = (
        "import os, sys; e = os.environ; "
        f"open('{tmp_path}/rank-' + e['RANK'], 'w').write("
        "' '.join(e[k] for k in ('WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'))); "
        "sys.exit(7 if e['RANK'] == '1' else 0)"
    )
    port = free_port()
    command = [
        *launch_command(hostfile, tmp_path / "unused.json", "127.0.0.1", port),
        "--",
        sys.executable,
        "-c",
        script,
    ]
    trainer = Trainer(command, trainer_env(), tmp_path / "launch.log")
    assert trainer.wait(timeout=300) == 7, trainer.output()[-3000:]
    assert (tmp_path / "rank-0").read_text() == f"2 0 127.0.0.1 {port}"
    assert (tmp_path / "rank-1").read_text() == f"2 1 127.0.0.1 {port}"
