"""End to end: real trainers on the local cluster, the chart-installed operator, faults.

Figures (seconds from kill to detection and to all workers running, steps lost) are
printed for the closing notes; run with `-s` to see them.
"""

import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmjob_devcluster.layout import Layout
from llmjob_operator.render import KUEUE_QUEUE_LABEL
from llmjob_trainer.config import checkpoint_tag
from tests.conftest import container_logs, wait_for
from tests.e2e.conftest import CHECKPOINT_INTERVAL, TRAINING, Operator, trainer_job
from tests.e2e.pod_processes import operator_processes, trainer_ranks
from tests.e2e.training import (
    checkpoint_dir,
    committed_steps,
    exported_weights,
    rank0_metrics,
    same_weights,
    wait_for_step,
    worker_logs,
)
from tests.integration.jobs import GangWatch, Jobs, condition
from tests.integration.kueue_queues import Queues

pytestmark = pytest.mark.e2e
MAX_STEPS = TRAINING["maxSteps"]


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def resumed_step(jobs: Jobs, job: str) -> int:
    """The step attempt N resumed at, from rank 0's own log line."""
    for line in worker_logs(jobs, job, 0).splitlines():
        if "resumed at step" in line:
            return int(line.split("resumed at step")[1].split()[0])
    raise AssertionError(f"{job}: worker 0 did not resume from a checkpoint")


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """Results of the uninterrupted happy-path run, for comparison by later tests."""
    return {}


def test_happy_path_succeeds_and_the_exported_model_generates(
    trainer_jobs: Jobs, reference: dict[str, Any]
) -> None:
    trainer_jobs.create(trainer_job("happy"))
    done = trainer_jobs.wait_phase("happy", "Succeeded", timeout=600)
    assert (done["attempt"], done["restarts"], done["disruptions"]) == (1, 0, 0)
    assert done["progress"]["step"] == MAX_STEPS
    assert done["progress"]["loss"] < 5.0
    assert done["progress"]["tokensPerSecond"] > 0
    assert done["checkpoint"]["step"] == MAX_STEPS
    directory = checkpoint_dir(trainer_jobs, "happy")
    assert committed_steps(directory)[-1] == MAX_STEPS
    model = AutoModelForCausalLM.from_pretrained(directory / "export")
    tokenizer = AutoTokenizer.from_pretrained(directory / "export")
    output = model.generate(**tokenizer("def ", return_tensors="pt"), max_new_tokens=16)
    assert output.shape[1] > 4
    reference["weights"] = exported_weights(directory)


def test_sigkill_of_a_rank_resumes_from_the_newest_commit_with_identical_weights(
    trainer_jobs: Jobs, reference: dict[str, Any]
) -> None:
    if "weights" not in reference:
        pytest.fail("needs the happy-path run's weights (run the whole module)")
    trainer_jobs.create(trainer_job("killed"))
    wait_for_step(trainer_jobs, "killed", CHECKPOINT_INTERVAL + 5)
    (rank,) = trainer_ranks(trainer_jobs.namespace, "killed-worker-1")
    step_at_kill = rank0_metrics(trainer_jobs, "killed")["llmjob_trainer_step"]
    killed_at = time.time()
    os.kill(rank, signal.SIGKILL)

    restarted = trainer_jobs.wait("killed", lambda s: s.get("attempt") == 2, timeout=300)
    running = trainer_jobs.wait(
        "killed", lambda s: s.get("phase") == "Running" and s.get("attempt") == 2, timeout=300
    )
    done = trainer_jobs.wait_phase("killed", "Succeeded", timeout=600)
    resumed = resumed_step(trainer_jobs, "killed")
    assert done["restarts"] == 1
    assert restarted["lastFailure"]["reason"] == "WorkerFailed"
    assert resumed % CHECKPOINT_INTERVAL == 0
    lost = step_at_kill - resumed
    assert 0 <= lost <= CHECKPOINT_INTERVAL
    differing = same_weights(
        exported_weights(checkpoint_dir(trainer_jobs, "killed")), reference["weights"]
    )
    assert differing == [], f"weights differ from the uninterrupted run: {differing[:5]}"
    detection = parse_time(restarted["lastFailure"]["time"]) - killed_at
    print(
        f"\nFIGURES sigkill: detection {detection:.1f}s,"
        f" all workers running again {parse_time(running['runningTime']) - killed_at:.1f}s,"
        f" steps lost {lost:.0f} (killed at {step_at_kill:.0f}, resumed at {resumed})"
    )


def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_commit(
    trainer_jobs: Jobs,
) -> None:
    torn_step = 2 * CHECKPOINT_INTERVAL
    env = [{"name": "LLMJOB_FAULT", "value": f"before-manifest:{torn_step}@1"}]
    trainer_jobs.create(trainer_job("torn", env=env))
    restarted = trainer_jobs.wait("torn", lambda s: s.get("attempt") == 2, timeout=300)
    assert restarted["restarts"] == 1
    done = trainer_jobs.wait_phase("torn", "Succeeded", timeout=600)
    assert done["progress"]["step"] == MAX_STEPS
    assert resumed_step(trainer_jobs, "torn") == CHECKPOINT_INTERVAL
    steps = committed_steps(checkpoint_dir(trainer_jobs, "torn"))
    assert steps[-1] == MAX_STEPS
    assert "Traceback" not in worker_logs(trainer_jobs, "torn", 0)


def test_operator_killed_mid_job_and_mid_restart_keeps_one_gang_and_the_budget(
    trainer_jobs: Jobs, e2e_operator: Operator, api_client: client.ApiClient
) -> None:
    gang = GangWatch(api_client, trainer_jobs.namespace, "adopted")
    try:
        spec = trainer_job("adopted", failurePolicy={"backoffSeconds": 15, "maxRestarts": 2})
        trainer_jobs.create(spec)
        wait_for_step(trainer_jobs, "adopted", 10)
        (rank,) = trainer_ranks(trainer_jobs.namespace, "adopted-worker-0")
        # The rank dies while no operator runs: the one that comes back (after waiting out its
        # predecessor's Lease) finds the failed gang.
        kill_operator(e2e_operator, then=lambda: os.kill(rank, signal.SIGKILL))
        restarting = trainer_jobs.wait_phase("adopted", "Restarting", timeout=300)
        assert restarting["restarts"] == 1
        kill_operator(e2e_operator)
        done = trainer_jobs.wait_phase("adopted", "Succeeded", timeout=600)
    finally:
        gang.stop()
    assert done["restarts"] == 1
    assert done["attempt"] == 2
    assert gang.overlaps == [], "two attempts' pods were alive at once"


def kill_operator(operator: Operator, then: Callable[[], None] = lambda: None) -> None:
    """SIGKILL the operator's process (a crash), do `then` while it is down, and return once
    its Deployment has brought a new one."""
    old = operator.pod()
    pids = operator_processes(old.metadata.name)
    assert pids, f"no process of {old.metadata.name} found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    then()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            current = operator.pod()
        except AssertionError:
            time.sleep(1)
            continue
        if current.metadata.uid != old.metadata.uid or (
            current.status.container_statuses
            and current.status.container_statuses[0].restart_count > 0
            and current.status.container_statuses[0].ready
        ):
            return
        time.sleep(1)
    raise AssertionError("the operator did not come back after being killed")


def test_suspend_checkpoints_on_sigterm_and_resume_continues_from_there_on_fewer_workers(
    trainer_jobs: Jobs,
) -> None:
    """Suspended, its `workers` edited from 2 to 1, resumed: the one-worker gang resumes the
    two-worker SIGTERM commit through DeepSpeed's universal format (an elastic resume). With
    globalBatchSize set, the edit doubles the gradient accumulation that keeps it."""
    global_batch = {**TRAINING, "globalBatchSize": 2 * TRAINING["microBatchSize"]}
    trainer_jobs.create(trainer_job("paused", training=global_batch))
    wait_for_step(trainer_jobs, "paused", CHECKPOINT_INTERVAL + 3)
    trainer_jobs.patch_spec("paused", {"runPolicy": {"suspend": True}})
    trainer_jobs.wait_phase("paused", "Suspended", timeout=120)
    deadline = time.monotonic() + 120
    while trainer_jobs.pods("paused"):
        assert time.monotonic() < deadline, "suspended workers did not stop"
        time.sleep(0.5)
    steps = committed_steps(checkpoint_dir(trainer_jobs, "paused"))
    sigterm_step = steps[-1]
    assert sigterm_step % CHECKPOINT_INTERVAL != 0, f"no SIGTERM checkpoint: {steps}"
    # The suspended job's status names that commit (the workers' exit reports said it).
    trainer_jobs.wait(
        "paused",
        lambda s: (s.get("checkpoint") or {}).get("step") == sigterm_step,
        timeout=30,
        what=f"status.checkpoint.step {sigterm_step}",
    )
    trainer_jobs.patch_spec(
        "paused",
        {
            "workers": 1,
            "training": {"gradientAccumulationSteps": 2},
            "runPolicy": {"suspend": False},
        },
    )
    trainer_jobs.wait("paused", lambda s: s.get("attempt") == 2, timeout=120)
    assert len(trainer_jobs.pods("paused")) == 1
    done = trainer_jobs.wait_phase("paused", "Succeeded", timeout=600)
    assert (done["restarts"], done["disruptions"]) == (0, 0)
    assert done["progress"]["step"] == MAX_STEPS
    assert resumed_step(trainer_jobs, "paused") == sigterm_step
    assert "to universal format" in worker_logs(trainer_jobs, "paused", 0)


def log_time(line: str) -> float:
    """The time of a trainer log line (logging's asctime; the image's clock is UTC)."""
    stamp = datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f")
    return stamp.replace(tzinfo=UTC).timestamp()


def test_a_preempting_job_gets_the_quota_and_the_preempted_one_resumes_losing_no_step(
    queued_trainer_jobs: Jobs,
    training_queues: Queues,
    priority_classes: dict[str, str],
    devcluster: Layout,
    reference: dict[str, Any],
) -> None:
    """Under the real Kueue with quota for one job: a higher-priority job evicts a training
    one, whose workers commit on SIGTERM; the operator counts a disruption (not a restart)
    and queues the gang again; re-admitted once the quota is free, it resumes at the step it
    stopped at and ends with the weights of the uninterrupted run."""
    if "weights" not in reference:
        pytest.fail("needs the happy-path run's weights (run the whole module)")
    jobs = queued_trainer_jobs
    # Two workers of the e2e size (500m, 1Gi each): one such job at a time.
    queue = training_queues.create(
        quota={"cpu": "1", "memory": "2Gi"}, preemption={"withinClusterQueue": "LowerPriority"}
    )
    # A CPU step takes tens of ms, the whole run seconds: rank 0 of attempt 1 holds in the
    # commit of step 40 until the test releases it, so that the eviction always finds it
    # training (the files live on the claim, which the test sees at checkpoint_dir).
    hold_step, release = 2 * CHECKPOINT_INTERVAL, "release-preemption"
    low = trainer_job(
        "low",
        scheduling={"priorityClassName": priority_classes["low"]},
        env=[
            {"name": "LLMJOB_FAULT", "value": f"hold-before-fence:{hold_step}@1"},
            {"name": "LLMJOB_FAULT_RELEASE", "value": f"/checkpoints/low/{release}"},
        ],
    )
    low["metadata"]["labels"] = {KUEUE_QUEUE_LABEL: queue}
    jobs.create(low)

    def rank0_log(needle: str) -> str | None:
        lines = container_logs(devcluster, jobs.namespace, "low-worker-0", "trainer")
        return next((line for line in lines.splitlines() if needle in line), None)

    wait_for(lambda: rank0_log("holding at hold-before-fence"), timeout=120, what="the hold")
    # Short and on one worker: it needs half the quota, so the low job must make way.
    high = trainer_job(
        "high",
        workers=1,
        training={**TRAINING, "maxSteps": 10},
        scheduling={"priorityClassName": priority_classes["high"]},
    )
    high["metadata"]["labels"] = {KUEUE_QUEUE_LABEL: queue}
    jobs.create(high)
    arrival = parse_time(jobs.get("high")["metadata"]["creationTimestamp"])
    sigterm = wait_for(lambda: rank0_log("SIGTERM: stopping"), timeout=60, what="SIGTERM")
    (checkpoint_dir(jobs, "low") / release).touch()

    requeued = jobs.wait(
        "low", lambda s: s.get("attempt") == 2 and s.get("phase") == "Queued", timeout=120
    )
    assert (requeued["restarts"], requeued["disruptions"]) == (0, 1)
    failure = requeued["lastFailure"]
    assert (failure["reason"], failure["counted"], failure["attempt"]) == ("Preempted", False, 1)
    stopped = rank0_log("stopped by SIGTERM at step")
    assert stopped is not None, "attempt 1 did not stop through its SIGTERM commit"
    stopped_step = int(stopped.split("at step")[1].split()[0])
    commit = rank0_log(f"committed {checkpoint_tag(stopped_step)}")
    assert commit is not None
    assert stopped_step > hold_step
    # Queued, it holds nothing: its newest commit on the claim is the SIGTERM one, and the
    # status says so (from the workers' exit reports: their /metrics went with them).
    assert committed_steps(checkpoint_dir(jobs, "low"))[-1] == stopped_step
    queued_checkpoint = requeued.get("checkpoint") or {}
    assert (queued_checkpoint.get("step"), queued_checkpoint.get("tag")) == (
        stopped_step,
        checkpoint_tag(stopped_step),
    ), f"status.checkpoint while queued: {queued_checkpoint}"
    assert not any(pod.spec.node_name for pod in jobs.pods("low"))

    finished = jobs.wait_phase("high", "Succeeded", timeout=300)
    running = jobs.wait(
        "low", lambda s: s.get("attempt") == 2 and s.get("phase") == "Running", timeout=120
    )
    admitted = condition(running, "Queued")
    assert admitted is not None and admitted["message"].startswith("attempt 2 admitted")
    done = jobs.wait_phase("low", "Succeeded", timeout=600)
    resumed = resumed_step(jobs, "low")
    assert resumed == stopped_step
    assert (done["attempt"], done["restarts"], done["disruptions"]) == (2, 0, 1)
    assert done["progress"]["step"] == MAX_STEPS
    differing = same_weights(exported_weights(checkpoint_dir(jobs, "low")), reference["weights"])
    assert differing == [], f"weights differ from the uninterrupted run: {differing[:5]}"

    def since(moment: str) -> str:
        # Whole seconds: the API's timestamps have no finer grain.
        return f"{parse_time(moment) - arrival:.0f}s"

    print(
        "\nFIGURES preemption, from the high job's arrival:"
        f" SIGTERM at the low job's rank 0 {log_time(sigterm) - arrival:.1f}s,"
        f" eviction seen by the operator {since(failure['time'])},"
        f" {commit.split(' ', 4)[-1]} (the SIGTERM commit, step {stopped_step}),"
        f" high done {since(finished['completionTime'])},"
        f" low re-admitted {since(admitted['lastTransitionTime'])},"
        f" running again {since(running['runningTime'])},"
        f" resumed at step {resumed}: steps lost {stopped_step - resumed};"
        f" status.checkpoint while queued: step {queued_checkpoint['step']}"
    )


def test_a_frozen_rank_is_detected_as_stalled_and_the_job_recovers(trainer_jobs: Jobs) -> None:
    stall_timeout = 20
    trainer_jobs.create(trainer_job("frozen", failurePolicy={"stallTimeoutSeconds": stall_timeout}))
    wait_for_step(trainer_jobs, "frozen", 10)
    (rank,) = trainer_ranks(trainer_jobs.namespace, "frozen-worker-1")
    os.kill(rank, signal.SIGSTOP)
    frozen_at = time.time()
    restarted = trainer_jobs.wait(
        "frozen", lambda s: (s.get("lastFailure") or {}).get("reason") == "Stalled", timeout=120
    )
    detected = parse_time(restarted["lastFailure"]["time"]) - frozen_at
    # Hang detection reads /metrics every progress interval (2s here) and then waits the
    # stall timeout from the last advance it saw.
    assert detected <= stall_timeout + 2 + 3, f"detected after {detected:.1f}s"
    done = trainer_jobs.wait_phase("frozen", "Succeeded", timeout=600)
    assert done["restarts"] == 1
    print(f"\nFIGURES stall: detected {detected:.1f}s after SIGSTOP (timeout {stall_timeout}s)")


def test_a_lost_node_restarts_uncounted_and_the_job_succeeds(
    trainer_jobs: Jobs, devcluster: Layout, core: client.CoreV1Api
) -> None:
    # Default failure settings: the survivors fail first and the restart is at once; the
    # local cluster marks the node NotReady 8s after the loss, and the restart is given back.
    trainer_jobs.create(trainer_job("stranded"))
    wait_for_step(trainer_jobs, "stranded", 10)
    node = trainer_jobs.core.read_namespaced_pod(
        "stranded-worker-1", trainer_jobs.namespace
    ).spec.node_name
    marker: Path = devcluster.control_dir / f"lost-{node}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        restarted = trainer_jobs.wait("stranded", lambda s: s.get("attempt") == 2, timeout=300)
        assert restarted["restarts"] == 0
        assert restarted["disruptions"] == 1
        done = trainer_jobs.wait_phase("stranded", "Succeeded", timeout=600)
    finally:
        marker.unlink(missing_ok=True)
    assert done["restarts"] == 0
    assert condition(done, "Succeeded")["status"] == "True"


def _invalid(name: str, **spec: Any) -> dict[str, Any]:
    document = trainer_job(name)
    document["spec"].update(spec)
    return document


# (case, manifest, text the API server's or the operator's message must contain)
SCHEMA_REJECTED: list[tuple[str, dict[str, Any], str]] = [
    ("no workers", _invalid("bad-a", workers=0), "spec.workers"),
    ("negative gpus", _invalid("bad-b", gpusPerWorker=-1), "spec.gpusPerWorker"),
    (
        "two model sources",
        _invalid("bad-c", model={"preset": "tiny", "path": "/m"}),
        "model.preset",
    ),
    (
        "unknown precision",
        _invalid("bad-d", training={**TRAINING, "precision": "fp8"}),
        "precision",
    ),
    (
        "claim and size",
        _invalid("bad-e", checkpoint={"size": "1Gi", "claimName": "c"}),
        "checkpoint",
    ),
    ("unknown field", _invalid("bad-f", worker=3), "worker"),
    ("seq too short", _invalid("bad-g", training={**TRAINING, "seqLen": 4}), "seqLen"),
    ("procs with gpus", _invalid("bad-h", gpusPerWorker=2, procsPerWorker=3), "procsPerWorker"),
    (
        "global batch",
        _invalid("bad-i", training={**TRAINING, "globalBatchSize": 7}),
        "globalBatchSize",
    ),
    (
        "rule with two matchers",
        _invalid(
            "bad-j",
            failurePolicy={
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"operator": "In", "values": [1]},
                        "onPodConditions": ["DisruptionTarget"],
                    }
                ]
            },
        ),
        "onExitCodes",
    ),
    ("name too long", _invalid("a" * 55), "metadata.name"),
]
# Valid for the CRD schema: the chart's validating webhook (the operator's pydantic API)
# refuses them at apply. (An invalid spec that gets past admission fails with InvalidSpec:
# tests/integration/test_admission.py and test_operator.py.)
WEBHOOK_REJECTED: list[tuple[str, dict[str, Any], str]] = [
    (
        "deepspeed contradicts training",
        _invalid("bad-k", deepspeed={"gradient_accumulation_steps": 8}),
        "deepspeed.gradient_accumulation_steps",
    ),
    (
        "mount of no volume",
        _invalid("bad-l", volumeMounts=[{"name": "x", "mountPath": "/x"}]),
        "volumeMounts",
    ),
    ("reserved env", _invalid("bad-m", env=[{"name": "LLMJOB_ATTEMPT", "value": "7"}]), "env"),
    (
        "seq beyond the model",
        _invalid("bad-n", training={**TRAINING, "seqLen": 4096}),
        "training.seqLen",
    ),
]


def test_invalid_manifests_are_rejected_naming_the_field_and_others_still_train(
    trainer_jobs: Jobs, kubectl: list[str]
) -> None:
    def apply(document: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*kubectl, "apply", "-n", trainer_jobs.namespace, *flags, "-f", "-"],
            input=yaml.safe_dump(document),
            capture_output=True,
            text=True,
            check=False,
        )

    # The webhook answers once the operator's server is up (helm's --wait sees /healthz); a
    # dry run, so that nothing is created while it does not.
    wait_for(
        lambda: "denied the request" in apply(WEBHOOK_REJECTED[0][1], "--dry-run=server").stderr,
        timeout=60,
        what="the chart's webhook",
    )
    for case, document, field in SCHEMA_REJECTED + WEBHOOK_REJECTED:
        result = apply(document)
        assert result.returncode != 0, f"{case}: accepted"
        assert field in result.stderr, f"{case}: {result.stderr}"
    for case, document, _field in WEBHOOK_REJECTED:
        assert "denied the request" in apply(document).stderr, case
    trainer_jobs.create(trainer_job("survivor", training={**TRAINING, "maxSteps": 20}))
    assert len(SCHEMA_REJECTED) + len(WEBHOOK_REJECTED) >= 10
    trainer_jobs.wait_phase("survivor", "Succeeded", timeout=600)
