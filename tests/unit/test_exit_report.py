"""The trainer's exit report (its termination message) carries the newest committed checkpoint
past the pod: written by the trainer, read back by the operator's parser, kept by the cache
after the pod is deleted, and shown in status while no attempt runs."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmjob_operator.observe import ExitCheckpoint, exit_checkpoint, exit_report, worker_state
from llmjob_operator.store import Store
from llmjob_trainer.config import checkpoint_tag
from llmjob_trainer.exit_report import write_exit_report
from tests.unit.test_reconcile import run, running_status, worker
from tests.unit.test_store import job

COMMITTED = datetime(2026, 12, 3, 8, 30, tzinfo=UTC)


def ended_pod(
    attempt: int, message: str, exit_code: int = 143, owner: str = "u1", index: int = 0
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": f"j-worker-{index}",
            "namespace": "ns",
            "uid": f"pod-{attempt}-{index}",
            "resourceVersion": str(10 * attempt + index),
            "labels": {
                "training.llmjob.dev/job-name": "j",
                "training.llmjob.dev/worker-index": str(index),
                "training.llmjob.dev/attempt": str(attempt),
            },
            "ownerReferences": [{"kind": "LLMTrainingJob", "uid": owner, "controller": True}],
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "message": message,
                            "finishedAt": "2026-12-03T08:31:00Z",
                        }
                    },
                }
            ],
        },
    }


def test_what_the_trainer_writes_the_operator_reads(tmp_path: Path) -> None:
    report = tmp_path / "termination-log"
    report.touch()
    write_exit_report(report, 40)
    write_exit_report(report, 80, COMMITTED)  # rewritten in place after each commit
    assert exit_report(report.read_text()) == (80, COMMITTED)
    assert len(report.read_bytes()) < 4096  # the kubelet keeps the first 4 KiB
    write_exit_report(report, 120)  # the step an attempt resumed from: no commit time
    assert exit_report(report.read_text()) == (120, None)


def test_other_termination_messages_are_not_reports() -> None:
    for message in (
        None,
        "",
        "Traceback (most recent call last): ...",
        "{not json",
        "[1, 2]",
        json.dumps({"lastCheckpointStep": "40"}),
        json.dumps({"lastCheckpointStep": True}),
        json.dumps({"lastCheckpointStep": 0}),
    ):
        assert exit_report(message) is None, message
    bad_time = json.dumps({"lastCheckpointStep": 7, "committedAt": "yesterday"})
    assert exit_report(bad_time) == (7, None)


def test_a_report_is_data_not_the_failures_description() -> None:
    reported = worker_state(ended_pod(1, json.dumps({"lastCheckpointStep": 40})))
    assert reported is not None
    assert (reported.exit_code, reported.terminated_message) == (143, None)
    crashed = worker_state(ended_pod(1, "CUDA error: out of memory", exit_code=1))
    assert crashed is not None and crashed.terminated_message == "CUDA error: out of memory"
    assert exit_checkpoint(ended_pod(1, "CUDA error: out of memory", exit_code=1)) is None


def test_the_cache_keeps_the_newest_report_after_the_pods_are_deleted() -> None:
    store = Store()
    store.put_job(job("j", "u1", 1))
    first = ended_pod(1, json.dumps({"lastCheckpointStep": 40}), index=0)
    store.put_owned("Pod", first)
    store.put_owned("Pod", ended_pod(1, "", index=1))
    later = {"lastCheckpointStep": 60, "committedAt": "2026-12-03T08:30:00Z"}
    # A DELETED event carries the final state: the pods leave the cache, the report stays.
    store.drop_owned("Pod", ended_pod(1, json.dumps(later), index=1))
    store.drop_owned("Pod", first)
    assert store.owned(("ns", "j")) == []
    assert store.exit_checkpoint(("ns", "j")) == ExitCheckpoint(1, 60, COMMITTED)
    # A later attempt's report wins even with a lower step (it fell back past a bad one).
    store.put_owned("Pod", ended_pod(2, json.dumps({"lastCheckpointStep": 20})))
    assert store.exit_checkpoint(("ns", "j")) == ExitCheckpoint(2, 20, None)
    store.put_owned("Pod", ended_pod(1, json.dumps({"lastCheckpointStep": 90}), index=1))
    assert store.exit_checkpoint(("ns", "j")) == ExitCheckpoint(2, 20, None)
    # Another job's pods, and a job re-created under the name, have none of it.
    store.put_owned("Pod", ended_pod(3, json.dumps({"lastCheckpointStep": 99}), owner="other"))
    store.put_job(job("j", "u2", 5))
    assert store.exit_checkpoint(("ns", "j")) is None
    # A deleted job's pods deleted after it (garbage collection) leave nothing behind.
    store.put_owned("Pod", ended_pod(3, "", owner="u2"))
    store.drop_job(("ns", "j"))
    store.drop_owned("Pod", ended_pod(3, json.dumps({"lastCheckpointStep": 99}), owner="u2"))
    assert store._exit_checkpoints == {}


def test_a_queued_job_shows_the_checkpoint_its_evicted_workers_committed() -> None:
    queued = {
        "phase": "Queued",
        "attempt": 2,
        "checkpoint": {"step": 40, "tag": checkpoint_tag(40)},
    }
    reported = ExitCheckpoint(attempt=1, step=57, time=COMMITTED)
    gated = [worker(i, "Pending", attempt=2, started=False) for i in range(2)]
    result = run(status=queued, workers=gated, exit_checkpoint=reported)
    assert result.status.checkpoint is not None
    assert (result.status.checkpoint.step, result.status.checkpoint.tag) == (57, checkpoint_tag(57))
    assert result.status.checkpoint.time == COMMITTED
    # Never backwards from a report: status already past it stays.
    past = {**queued, "checkpoint": {"step": 60, "tag": checkpoint_tag(60)}}
    kept = run(status=past, workers=gated, exit_checkpoint=reported)
    assert kept.status.checkpoint is not None and kept.status.checkpoint.step == 60


def test_a_running_gang_takes_its_checkpoint_from_metrics_not_from_old_reports() -> None:
    status = running_status(checkpoint={"step": 30, "tag": checkpoint_tag(30)})
    result = run(
        status=status,
        workers=[worker(0), worker(1)],
        exit_checkpoint=ExitCheckpoint(attempt=1, step=57, time=COMMITTED),
    )
    assert result.status.phase == "Running"
    assert result.status.checkpoint is not None and result.status.checkpoint.step == 30
