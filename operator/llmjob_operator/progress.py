"""Reads a job's training progress from rank 0's /metrics (the trainer's Prometheus text)."""

import urllib.request
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from llmjob_operator.observe import TrainerProgress

SCRAPE_TIMEOUT_SECONDS = 3.0


def parse_metrics(text: str) -> TrainerProgress:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, sample.value)

    def number(name: str) -> float | None:
        return values.get(f"llmjob_trainer_{name}")

    step = number("step")
    checkpoint_step = number("last_checkpoint_step")
    checkpoint_time = number("last_checkpoint_timestamp_seconds")
    return TrainerProgress(
        step=int(step) if step is not None else None,
        loss=number("loss"),
        tokens_per_second=number("tokens_per_second"),
        last_checkpoint_step=int(checkpoint_step) if checkpoint_step is not None else None,
        last_checkpoint_time=datetime.fromtimestamp(checkpoint_time, UTC)
        if checkpoint_time
        else None,
    )


def scrape(pod_ip: str, port: int) -> TrainerProgress:
    """Never raises: an unreachable trainer is reported as an error, and hang detection
    treats it like a step that does not advance."""
    url = f"http://{pod_ip}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
            return parse_metrics(response.read().decode())
    except (OSError, ValueError) as error:
        return TrainerProgress(error=f"{url}: {error}")
