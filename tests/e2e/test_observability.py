"""End to end: a real Prometheus scrapes the chart-installed operator and real trainers during
a run; the job's step, loss, tokens/s, restarts and checkpoint age come back as expected."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e.conftest import CHECKPOINT_INTERVAL, TRAINING, Operator, trainer_job
from tests.e2e.pod_processes import trainer_ranks
from tests.e2e.training import wait_for_step
from tests.integration.jobs import Jobs
from tests.integration.prometheus import PodDiscovery, Prometheus, install_prometheus

pytestmark = pytest.mark.e2e
JOB = "observed"


def scrape_job(name: str, targets: Path, *keep: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_name": name,
        # The operator's per-job series carry the job's own `namespace` label: keep it.
        "honor_labels": True,
        "scrape_interval": "2s",
        "scrape_timeout": "1s",
        "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "2s"}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": "metrics",
                "action": "keep",
            },
            *keep,
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }


@pytest.fixture
def prometheus(
    api_client: client.ApiClient, e2e_operator: Operator, trainer_jobs: Jobs, tmp_path: Path
) -> Iterator[Prometheus]:
    install_prometheus()
    discovery = PodDiscovery(api_client)
    operator_targets = discovery.add(tmp_path / "operator.json", [e2e_operator.namespace])
    trainer_targets = discovery.add(tmp_path / "trainers.json", [trainer_jobs.namespace])
    worker_label = {
        "source_labels": ["__meta_kubernetes_pod_labelpresent_training_llmjob_dev_worker_index"],
        "regex": "true",
        "action": "keep",
    }
    config = {
        "global": {"scrape_interval": "2s"},
        "scrape_configs": [
            scrape_job("llmjob-operator", operator_targets),
            scrape_job("llmjob-trainer", trainer_targets, worker_label),
        ],
    }
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    server = Prometheus(tmp_path)
    discovery.start()
    server.start()
    yield server
    server.stop()
    discovery.stop()


def value(prometheus: Prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_sees_step_loss_throughput_restarts_and_checkpoint_age(
    trainer_jobs: Jobs, prometheus: Prometheus
) -> None:
    trainer_jobs.create(trainer_job(JOB, training={**TRAINING, "maxSteps": 400}))
    selector = f'{{job_name="{JOB}"}}'
    wait_for_step(trainer_jobs, JOB, CHECKPOINT_INTERVAL + 2)
    prometheus.wait_for(
        "the trainer's step in Prometheus",
        lambda: (
            (value(prometheus, f"max(llmjob_trainer_step{selector})") or 0) > CHECKPOINT_INTERVAL
        ),
    )
    loss = value(prometheus, f"max(llmjob_trainer_loss{selector})")
    assert loss is not None and 0 < loss < 10
    throughput = value(prometheus, f"sum(llmjob_trainer_tokens_per_second{selector})")
    assert throughput is not None and throughput > 0
    age = value(
        prometheus, f"time() - max(llmjob_trainer_last_checkpoint_timestamp_seconds{selector})"
    )
    assert age is not None and 0 <= age < 120

    (rank,) = trainer_ranks(trainer_jobs.namespace, f"{JOB}-worker-1")
    os.kill(rank, signal.SIGKILL)
    restarts = (
        f'llmjob_operator_job_restarts{{namespace="{trainer_jobs.namespace}",job_name="{JOB}"}}'
    )
    prometheus.wait_for("restarts == 1 in Prometheus", lambda: value(prometheus, restarts) == 1)
    trainer_jobs.wait_phase(JOB, "Succeeded", timeout=600)
    deadline = time.monotonic() + 30
    while value(prometheus, 'llmjob_operator_jobs{phase="Succeeded"}') in (None, 0.0):
        assert time.monotonic() < deadline, "jobs{phase=Succeeded} never rose"
        time.sleep(2)
