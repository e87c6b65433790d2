"""What the e2e tests read from a training run: rank 0's /metrics, checkpoints on the claim's
volume, the exported model."""

import re
import time
import urllib.request
from pathlib import Path

import torch
from kubernetes import client
from safetensors.torch import load_file

from tests.integration.jobs import Jobs

MANIFEST = "llmjob-manifest.json"


def rank0_metrics(jobs: Jobs, job: str) -> dict[str, float]:
    """Rank 0's /metrics, read directly (not through the operator): {} while unreachable."""
    try:
        pod = jobs.core.read_namespaced_pod(f"{job}-worker-0", jobs.namespace)
    except client.ApiException:
        return {}
    if not pod.status.pod_ip:
        return {}
    url = f"http://{pod.status.pod_ip}:9400/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        match = re.match(r"^(llmjob_trainer_\w+)(?:\{[^}]*\})? (\S+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def wait_for_step(jobs: Jobs, job: str, step: int, timeout: float = 300) -> float:
    """Waits until rank 0 reports at least `step`; returns the step it reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = rank0_metrics(jobs, job).get("llmjob_trainer_step", -1)
        if seen >= step:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{job}: rank 0 never reached step {step} in {timeout}s")


def checkpoint_dir(jobs: Jobs, job: str) -> Path:
    """Where the claim's volume lies on this machine (the dev provisioner's hostPath)."""
    claim = jobs.core.read_namespaced_persistent_volume_claim(f"{job}-checkpoints", jobs.namespace)
    volume = jobs.core.read_persistent_volume(claim.spec.volume_name)
    return Path(volume.spec.host_path.path) / job


def committed_steps(directory: Path) -> list[int]:
    return sorted(
        int(child.name.split("_")[1])
        for child in directory.glob("runs/*/step_*")  # every run's (trainer checkpoint.py)
        if child.name.split("_")[1].isdigit() and (child / MANIFEST).is_file()
    )


def exported_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "export" / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of tensors that differ (bit for bit)."""
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]


def worker_logs(jobs: Jobs, job: str, worker: int) -> str:
    return str(jobs.core.read_namespaced_pod_log(f"{job}-worker-{worker}", jobs.namespace))
