"""The operator's own Prometheus metrics (`llmjob_operator_*`)."""

from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llmjob_operator.reconcile import Plan
from llmjob_operator.workqueue import WorkQueue

PHASES = ("Pending", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
# Seconds from seconds to hours: a gang start on a busy cluster can take many minutes.
DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)

RECONCILE_SECONDS = Histogram(
    "llmjob_operator_reconcile_duration_seconds",
    "Time to observe, plan and apply one job, by outcome: ok, retry (an error, retried with "
    "the job's backoff) or abandoned (the lease was lost mid-reconcile).",
    ["outcome"],
)
LEADER = Gauge(
    "llmjob_operator_leader", "1 on the replica whose reconcile workers act (it holds the Lease)."
)
QUEUE_LATENCY_SECONDS = Histogram(
    "llmjob_operator_workqueue_queue_duration_seconds",
    "Seconds a job waited in the work queue, from ready to taken by a worker.",
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
)
RECONCILE_ERRORS = Counter(
    "llmjob_operator_reconcile_errors_total", "Reconciles that failed with an API error."
)
TRANSITIONS = Counter(
    "llmjob_operator_transitions_total", "Job phase transitions.", ["phase", "reason"]
)
RESTARTS = Counter(
    "llmjob_operator_restarts_total", "Gang restarts (counted and not) by reason.", ["reason"]
)
TIMINGS = {
    "startup": Histogram(
        "llmjob_operator_job_startup_seconds",
        "From job creation to every worker of attempt 1 Running.",
        buckets=DURATION_BUCKETS,
    ),
    "recovery": Histogram(
        "llmjob_operator_job_recovery_seconds",
        "From a detected failure to every worker of the next attempt Running.",
        buckets=DURATION_BUCKETS,
    ),
    "fault_detection": Histogram(
        "llmjob_operator_fault_detection_seconds",
        "From a worker's exit to the job's status reporting it.",
        buckets=DURATION_BUCKETS,
    ),
}


def record(plan: Plan, previous_phase: str | None) -> None:
    """Count what a plan did, once its status write succeeded."""
    if plan.status.phase != previous_phase and plan.status.phase is not None:
        reason = plan.events[0].reason if plan.events else "Unknown"
        TRANSITIONS.labels(plan.status.phase, reason).inc()
    for reason in plan.restart_reasons:
        RESTARTS.labels(reason).inc()
    for timing in plan.timings:
        TIMINGS[timing.metric].observe(timing.seconds)


class JobsCollector(Collector):
    """Per-phase job counts and per-job restart counts, read from the cache at scrape time,
    so they can never drift from what the API server holds."""

    def __init__(self, jobs: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._jobs = jobs

    def collect(self) -> Iterable[GaugeMetricFamily]:
        by_phase = GaugeMetricFamily(
            "llmjob_operator_jobs", "LLMTrainingJobs by phase.", labels=["phase"]
        )
        restarts = GaugeMetricFamily(
            "llmjob_operator_job_restarts",
            "Counted restarts of each job (status.restarts).",
            labels=["namespace", "job_name"],
        )
        disruptions = GaugeMetricFamily(
            "llmjob_operator_job_disruptions",
            "Uncounted restarts of each job (status.disruptions).",
            labels=["namespace", "job_name"],
        )
        phases: Tally[str] = Tally()
        for job in self._jobs():
            status = job.get("status") or {}
            phases[status.get("phase") or "Pending"] += 1
            labels = [job["metadata"]["namespace"], job["metadata"]["name"]]
            restarts.add_metric(labels, status.get("restarts", 0))
            disruptions.add_metric(labels, status.get("disruptions", 0))
        for phase in PHASES:
            by_phase.add_metric([phase], phases[phase])
        yield by_phase
        yield restarts
        yield disruptions


class QueueCollector(Collector):
    """The work queue's depth and counters, read at scrape time."""

    def __init__(self, queue: "WorkQueue[Any]") -> None:
        self._queue = queue

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "llmjob_operator_workqueue_depth",
            "Jobs waiting for a reconcile worker now.",
            value=self._queue.depth(),
        )
        yield GaugeMetricFamily(
            "llmjob_operator_workqueue_delayed",
            "Jobs with a reconcile scheduled later (one deadline per job).",
            value=self._queue.waiting(),
        )
        yield CounterMetricFamily(
            "llmjob_operator_workqueue_adds",
            "Keys added to the work queue.",
            value=self._queue.adds,
        )
        yield CounterMetricFamily(
            "llmjob_operator_workqueue_retries",
            "Keys re-added with their error backoff.",
            value=self._queue.retries,
        )


def serve(port: int, jobs: Callable[[], Iterable[dict[str, Any]]], queue: "WorkQueue[Any]") -> None:
    REGISTRY.register(JobsCollector(jobs))
    REGISTRY.register(QueueCollector(queue))
    start_http_server(port)
