"""Shared helpers of the trainer tests: token data, configs, and real trainer processes.

Every process test runs the real trainer (DeepSpeed, gloo, CPU) in subprocesses, one
thread per rank so two ranks share two cores deterministically.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmjob_trainer.prepare import prepare

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("LLMJOB_CACHE", "/var/cache/llmjob"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts real trainer processes (seconds each)")


def trainer_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")])
    # DeepSpeed JIT-builds its CPU comm op once (1-2 min); every test reuses the build.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def token_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.bin/val.bin: the first ~300 kB of this Python's standard library, byte-level."""
    out = tmp_path_factory.mktemp("data")
    stdlib = Path(os.__file__).parent
    prepare([stdlib / "json", stdlib / "email"], out, None, 0.1, 300_000)
    return out


def write_config(
    directory: Path, data: Path, checkpoint: dict[str, Any] | None = None, **training: Any
) -> Path:
    config = {
        "jobName": "test",
        "model": {"preset": "tiny"},
        "data": {"path": str(data / "train.bin"), "validationPath": str(data / "val.bin")},
        "training": {
            "maxSteps": 8,
            "seqLen": 32,
            "microBatchSize": 2,
            "gradientAccumulationSteps": 2,
            "learningRate": 3e-3,
            "minLearningRate": 3e-4,
            "warmupSteps": 2,
            "precision": "fp32",
            "zeroStage": 2,
            "logIntervalSteps": 1,
            "evalBatches": 2,
            **training,
        },
        "checkpoint": {
            "dir": str(directory / "checkpoints"),
            "intervalSteps": 2,
            "keepLast": 2,
            **(checkpoint or {}),
        },
        "metricsPort": 0,
    }
    path = directory / "train.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def run_dir(checkpoints: Path, run_id: str = "test") -> Path:
    """Where a run's checkpoints are (checkpoint.py): without LLMJOB_RUN_ID, the job name."""
    return checkpoints / "runs" / run_id


class Trainer:
    """A trainer process tree in its own session, so a test can kill all of it."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log_file.close()


def train_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "llmjob_trainer.train", "--config", str(config)]


def launch_command(
    hostfile: Path, config: Path, host: str, port: int, node_rank: int = 0
) -> list[str]:
    """As the operator renders it (DESIGN §3), plus --host: the pod's name in the hostfile."""
    return [
        sys.executable, "-m", "llmjob_trainer.launch", f"--hostfile={hostfile}",
        f"--node-rank={node_rank}", f"--master-port={port}", f"--train-config={config}",
        f"--host={host}",
    ]  # fmt: skip


@pytest.fixture
def trainers() -> Iterator[list[Trainer]]:
    """Trainers a test starts; any still running at its end are killed."""
    started: list[Trainer] = []
    yield started
    for trainer in started:
        trainer.stop()


def logged_losses(output: str) -> list[float]:
    return [
        float(line.split("| loss ")[1].split()[0])
        for line in output.splitlines()
        if "| loss " in line
    ]
