"""The operator against the real API server, with stand-in workers on the node agent."""

import re
import subprocess
import time
from typing import Any

import pytest
from kubernetes import client

from llmjob_operator.render import ATTEMPT_LABEL
from tests.integration.jobs import GangWatch, Jobs, condition, standin_job
from tests.integration.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def test_happy_path_succeeds_with_progress_and_columns(
    jobs: Jobs, venv_bin: str, kubectl: list[str]
) -> None:
    jobs.create(standin_job("happy", venv_bin, standin={"steps": 20}))
    running = jobs.wait("happy", lambda s: (s.get("progress") or {}).get("step", 0) >= 1)
    assert running["phase"] == "Running"
    columns = subprocess.run(
        [*kubectl, "get", "llmjob", "happy", "-n", jobs.namespace, "--no-headers"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # NAME PHASE WORKERS STEP LOSS RESTARTS AGE
    assert columns[0] == "happy"
    assert columns[1] == "Running"
    assert re.fullmatch(r"\d/2", columns[2])
    assert int(columns[3]) >= 1
    assert float(columns[4]) > 0
    assert columns[5] == "0"

    done = jobs.wait_phase("happy", "Succeeded")
    assert done["attempt"] == 1
    assert done["restarts"] == 0
    assert done["completionTime"]
    assert done["checkpoint"]["step"] >= 1
    assert condition(done, "Succeeded")["status"] == "True"
    reasons = {e.reason for e in jobs.events("happy")}
    assert {"AttemptStarted", "Running", "Completed"} <= reasons


def test_one_failed_worker_replaces_the_whole_gang(
    jobs: Jobs, venv_bin: str, api_client: client.ApiClient
) -> None:
    gang = GangWatch(api_client, jobs.namespace, "flaky")
    try:
        jobs.create(standin_job("flaky", venv_bin, standin={"steps": 4, "fail": "1:1:1:1"}))
        done = jobs.wait_phase("flaky", "Succeeded", timeout=360)
    finally:
        gang.stop()
    assert done["attempt"] == 2
    assert done["restarts"] == 1
    assert done["disruptions"] == 0
    assert done["lastFailure"]["reason"] == "WorkerFailed"
    assert done["lastFailure"]["exitCode"] == 1
    assert done["lastFailure"]["worker"] == 1
    assert gang.attempts_seen == {"1", "2"}
    assert gang.overlaps == [], "two attempts' pods were alive at once"


def test_exit_code_2_fails_the_job_without_retrying(jobs: Jobs, venv_bin: str) -> None:
    jobs.create(standin_job("badconfig", venv_bin, standin={"steps": 30, "fail": "0:*:2:0"}))
    failed = jobs.wait_phase("badconfig", "Failed")
    assert failed["attempt"] == 1
    assert condition(failed, "Failed")["reason"] == "InvalidConfiguration"
    assert "exited with code 2" in condition(failed, "Failed")["message"]
    deadline = time.monotonic() + 60
    while any(p.status.phase == "Running" for p in jobs.pods("badconfig")):
        assert time.monotonic() < deadline, "the surviving worker was not cleaned up"
        time.sleep(1)


def test_restart_budget_exhausted_fails_the_job(jobs: Jobs, venv_bin: str) -> None:
    jobs.create(
        standin_job(
            "doomed",
            venv_bin,
            standin={"steps": 30, "fail": "1:*:1:0"},
            failurePolicy={"maxRestarts": 1, "backoffSeconds": 1, "maxBackoffSeconds": 1},
        )
    )
    failed = jobs.wait_phase("doomed", "Failed", timeout=360)
    assert failed["restarts"] == 1
    assert failed["attempt"] == 2
    assert condition(failed, "Failed")["reason"] == "RestartLimitExceeded"


def test_evicted_worker_restarts_without_spending_the_budget(
    jobs: Jobs, venv_bin: str, api_client: client.ApiClient
) -> None:
    jobs.create(
        standin_job(
            "evicted",
            venv_bin,
            standin={"steps": 12},
            failurePolicy={"maxRestarts": 0, "backoffSeconds": 1},
        )
    )
    jobs.wait_phase("evicted", "Running")
    client.CoreV1Api(api_client).create_namespaced_pod_eviction(
        "evicted-worker-1",
        jobs.namespace,
        client.V1Eviction(
            metadata=client.V1ObjectMeta(name="evicted-worker-1", namespace=jobs.namespace)
        ),
    )
    restarted = jobs.wait("evicted", lambda s: s.get("attempt") == 2, what="attempt 2")
    assert restarted["restarts"] == 0
    assert restarted["disruptions"] == 1
    done = jobs.wait_phase("evicted", "Succeeded", timeout=360)
    assert done["restarts"] == 0


def test_a_stalled_step_counter_restarts_with_reason_stalled(jobs: Jobs, venv_bin: str) -> None:
    jobs.create(
        standin_job(
            "stalled",
            venv_bin,
            standin={"steps": 4, "stall": "1:2"},
            failurePolicy={"stallTimeoutSeconds": 6, "backoffSeconds": 1},
        )
    )
    restarted = jobs.wait("stalled", lambda s: s.get("attempt") == 2, timeout=240)
    assert restarted["lastFailure"]["reason"] == "Stalled"
    assert restarted["restarts"] == 1
    done = jobs.wait_phase("stalled", "Succeeded", timeout=240)
    assert done["attempt"] == 2


def test_suspend_then_resume_continues_as_a_new_attempt(jobs: Jobs, venv_bin: str) -> None:
    jobs.create(standin_job("pausable", venv_bin, standin={"steps": 30}))
    jobs.wait_phase("pausable", "Running")
    jobs.patch_spec("pausable", {"runPolicy": {"suspend": True}})
    suspended = jobs.wait_phase("pausable", "Suspended")
    assert condition(suspended, "Suspended")["status"] == "True"
    deadline = time.monotonic() + 60
    while jobs.pods("pausable"):
        assert time.monotonic() < deadline, "suspended workers were not stopped"
        time.sleep(0.5)
    time.sleep(2)
    assert jobs.pods("pausable") == [], "a suspended job's workers came back"
    assert jobs.status("pausable")["restarts"] == 0
    jobs.patch_spec("pausable", {"runPolicy": {"suspend": False}})
    resumed = jobs.wait_phase("pausable", "Running")
    assert resumed["attempt"] == 2
    assert condition(resumed, "Suspended")["status"] == "False"
    done = jobs.wait_phase("pausable", "Succeeded", timeout=240)
    assert (done["restarts"], done["disruptions"]) == (0, 0)
    assert done["suspendedSeconds"] >= 1


def test_a_checkpoint_fallback_is_reported_once_and_the_job_finishes(
    jobs: Jobs, venv_bin: str
) -> None:
    jobs.create(
        standin_job("fellback", venv_bin, workers=1, standin={"steps": 4, "fallback": "1:4:2"})
    )
    reported = jobs.wait(
        "fellback",
        lambda s: (condition(s, "CheckpointFallback") or {}).get("status") == "True",
        timeout=120,
        what="CheckpointFallback condition",
    )
    fallback = condition(reported, "CheckpointFallback")
    assert fallback is not None
    assert fallback["reason"] == "CheckpointUnloadable"
    assert "checkpoint at step 4 failed to load" in fallback["message"]
    assert "resumed from step 2" in fallback["message"]
    done = jobs.wait_phase("fellback", "Succeeded")
    assert condition(done, "CheckpointFallback") == fallback, "the condition was rewritten"
    warnings = [e for e in jobs.events("fellback") if e.reason == "CheckpointUnloadable"]
    assert [(e.type, e.message) for e in warnings] == [("Warning", fallback["message"])]


def test_editing_workers_restarts_on_the_new_gang_size(
    jobs: Jobs, venv_bin: str, api_client: client.ApiClient
) -> None:
    jobs.create(
        standin_job("resized", venv_bin, workers=2, standin={"steps": 8, "step_seconds": 0.5})
    )
    jobs.wait_phase("resized", "Running")
    gang = GangWatch(api_client, jobs.namespace, "resized")
    try:
        jobs.patch_spec("resized", {"workers": 1})
        resized = jobs.wait(
            "resized",
            lambda s: s.get("attempt") == 2 and s.get("phase") == "Running",
            timeout=120,
            what="attempt 2 running",
        )
        pods = jobs.pods("resized")
        done = jobs.wait_phase("resized", "Succeeded", timeout=120)
    finally:
        gang.stop()
    assert (resized["restarts"], resized["disruptions"]) == (0, 0)
    assert resized["workers"]["total"] == 1
    assert [(p.metadata.name, p.metadata.labels[ATTEMPT_LABEL]) for p in pods] == [
        ("resized-worker-0", "2")
    ]
    env = {e.name: e.value for e in pods[0].spec.containers[0].env}
    assert env["LLMJOB_NUM_WORKERS"] == "1"
    hostfile = jobs.core.read_namespaced_config_map("resized-config", jobs.namespace).data[
        "hostfile"
    ]
    assert hostfile.splitlines() == [f"resized-worker-0.resized.{jobs.namespace}.svc slots=1"]
    assert gang.overlaps == [], "two attempts' pods were alive at once"
    assert gang.attempts_seen == {"1", "2"}
    assert done["attempt"] == 2
    assert "SpecChanged" in {e.reason for e in jobs.events("resized")}


@pytest.mark.parametrize("gang", [None, "Native"])
def test_a_gang_that_lost_its_nodes_capacity_continues_on_fewer_workers(
    jobs: Jobs, venv_bin: str, api_client: client.ApiClient, gang: str | None
) -> None:
    """Without a gang scheduler the restarted gang places what fits and shrinks to that;
    under the kube-scheduler's gang (Native) it places nothing until it steps down a size."""
    core = client.CoreV1Api(api_client)
    # One worker fills a node: with one node cordoned, the second worker has nowhere to go.
    gpus = min(int(n.status.allocatable["nvidia.com/gpu"]) for n in core.list_node().items)
    jobs.create(
        standin_job(
            "shrinking",
            venv_bin,
            gpusPerWorker=gpus,
            standin={"steps": 16, "step_seconds": 0.5},
            failurePolicy={
                "backoffSeconds": 1,
                "maxBackoffSeconds": 2,
                "onNodeLoss": {"shrinkAfterSeconds": 3, "minWorkers": 1},
            },
            **({"scheduling": {"gang": gang}} if gang else {}),
        )
    )
    jobs.wait(
        "shrinking", lambda s: (s.get("checkpoint") or {}).get("step", 0) >= 1, what="a commit"
    )
    lost = core.read_namespaced_pod("shrinking-worker-1", jobs.namespace).spec.node_name
    core.patch_node(lost, {"spec": {"unschedulable": True}})
    try:
        core.delete_namespaced_pod("shrinking-worker-1", jobs.namespace)
        shrunk = jobs.wait(
            "shrinking",
            lambda s: s.get("gangWorkers") == 1 and s.get("phase") == "Running",
            timeout=120,
            what="a gang of one running",
        )
        pods = jobs.pods("shrinking")
        done = jobs.wait_phase("shrinking", "Succeeded", timeout=120)
    finally:
        core.patch_node(lost, {"spec": {"unschedulable": False}})
    # Attempt 2 asked for both workers and could place one (none, as a gang); attempt 3 runs.
    assert shrunk["attempt"] == 3
    assert (shrunk["restarts"], shrunk["disruptions"]) == (0, 1)
    assert shrunk["workers"]["total"] == 1
    assert [(p.metadata.name, p.metadata.labels[ATTEMPT_LABEL]) for p in pods] == [
        ("shrinking-worker-0", "3")
    ]
    assert done["gangWorkers"] == 1
    shrinks = [e for e in jobs.events("shrinking") if e.reason == "GangShrunk"]
    assert len(shrinks) == 1
    assert "continues on 1 of 2 workers" in shrinks[0].message
    # The gang scheduler bound neither worker of attempt 2; without it, one was placed.
    unplaced = 2 if gang else 1
    assert f"{unplaced} of 2 workers of attempt 2 unschedulable" in shrinks[0].message


def test_active_deadline_fails_the_job_and_stops_the_workers(jobs: Jobs, venv_bin: str) -> None:
    jobs.create(
        standin_job(
            "slow", venv_bin, standin={"steps": 600}, runPolicy={"activeDeadlineSeconds": 8}
        )
    )
    failed = jobs.wait_phase("slow", "Failed", timeout=240)
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"
    deadline = time.monotonic() + 60
    while jobs.pods("slow"):
        assert time.monotonic() < deadline, "workers outlived the deadline"
        time.sleep(0.5)


def test_ttl_deletes_a_finished_job(jobs: Jobs, venv_bin: str) -> None:
    jobs.create(
        standin_job(
            "shortlived", venv_bin, standin={"steps": 1}, runPolicy={"ttlSecondsAfterFinished": 3}
        )
    )
    jobs.wait_phase("shortlived", "Succeeded")
    deadline = time.monotonic() + 60
    while True:
        try:
            jobs.get("shortlived")
        except client.ApiException as error:
            assert error.status == 404
            break
        assert time.monotonic() < deadline, "the finished job outlived its TTL"
        time.sleep(0.5)


def test_operator_killed_mid_restart_keeps_the_budget_and_one_gang(
    jobs: Jobs, venv_bin: str, api_client: client.ApiClient, llmjob_operator: OperatorProcess
) -> None:
    gang = GangWatch(api_client, jobs.namespace, "crashy")
    try:
        jobs.create(
            standin_job(
                "crashy",
                venv_bin,
                standin={"steps": 4, "fail": "0:1:1:1"},
                failurePolicy={"backoffSeconds": 6, "maxBackoffSeconds": 6},
            )
        )
        jobs.wait_phase("crashy", "Restarting", timeout=240)
        llmjob_operator.kill()
        time.sleep(2)
        llmjob_operator.start()
        done = jobs.wait_phase("crashy", "Succeeded", timeout=360)
    finally:
        gang.stop()
    assert done["restarts"] == 1
    assert done["attempt"] == 2
    assert gang.overlaps == []
    assert len({p.metadata.name for p in jobs.pods("crashy")}) <= 2


def test_an_upgraded_operator_leaves_a_running_gang_alone(
    jobs: Jobs, venv_bin: str, llmjob_operator: OperatorProcess
) -> None:
    """A helm upgrade mid-run: the new operator renders pods differently (here another default
    trainer image, as each release's chart sets). The running gang trains on to the end as
    attempt 1; only its next attempt would get the new rendering, whose image does not exist."""
    jobs.create(standin_job("upgraded", venv_bin, standin={"steps": 12, "step_seconds": 1}))
    jobs.wait_phase("upgraded", "Running")
    gang = {p.metadata.uid for p in jobs.pods("upgraded")}
    released = llmjob_operator.extra_args
    llmjob_operator.stop()
    llmjob_operator.extra_args = (*released, "--default-image=registry.invalid/trainer:next")
    try:
        llmjob_operator.start()
        done = jobs.wait_phase("upgraded", "Succeeded", timeout=180)
    finally:
        llmjob_operator.stop()
        llmjob_operator.extra_args = released
        llmjob_operator.start()
    assert (done["attempt"], done["restarts"], done["disruptions"]) == (1, 0, 0)
    assert {p.metadata.uid for p in jobs.pods("upgraded")} == gang
    assert "SpecChanged" not in {e.reason for e in jobs.events("upgraded")}


def test_invalid_spec_fails_with_the_field_named_and_others_still_run(
    jobs: Jobs, venv_bin: str
) -> None:
    # Free-form deepspeed keys pass the CRD schema; pydantic catches the contradiction.
    jobs.create(
        standin_job("contradiction", venv_bin, deepspeed={"train_micro_batch_size_per_gpu": 99})
    )
    jobs.create(standin_job("bystander", venv_bin, standin={"steps": 2}))
    failed = jobs.wait_phase("contradiction", "Failed")
    failure = condition(failed, "Failed")
    assert failure["reason"] == "InvalidSpec"
    assert "deepspeed.train_micro_batch_size_per_gpu" in failure["message"]
    assert "training.microBatchSize" in failure["message"]
    assert jobs.pods("contradiction") == []
    assert "InvalidSpec" in {e.reason for e in jobs.events("contradiction")}
    jobs.wait_phase("bystander", "Succeeded")


def test_unschedulable_gang_reports_the_schedulers_reason(jobs: Jobs, venv_bin: str) -> None:
    jobs.create(
        standin_job(
            "toobig",
            venv_bin,
            gpusPerWorker=64,
            failurePolicy={"schedulingTimeoutSeconds": 3, "failOnSchedulingTimeout": True},
        )
    )
    failed = jobs.wait_phase("toobig", "Failed", timeout=240)
    failure = condition(failed, "Failed")
    assert failure["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in failure["message"]


def test_operator_metrics_report_startup_and_restarts(
    jobs: Jobs, venv_bin: str, llmjob_operator: OperatorProcess
) -> None:
    jobs.create(standin_job("measured", venv_bin, standin={"steps": 3, "fail": "1:1:1:1"}))
    jobs.wait_phase("measured", "Succeeded", timeout=360)
    text = llmjob_operator.metrics()
    samples = _samples(text)
    assert samples['llmjob_operator_restarts_total{reason="WorkerFailed"}'] >= 1
    assert samples["llmjob_operator_job_startup_seconds_count"] >= 1
    assert samples["llmjob_operator_job_recovery_seconds_count"] >= 1
    assert samples["llmjob_operator_fault_detection_seconds_count"] >= 1
    assert samples['llmjob_operator_reconcile_duration_seconds_count{outcome="ok"}'] > 0
    assert samples["llmjob_operator_leader"] == 1
    assert samples["llmjob_operator_workqueue_queue_duration_seconds_count"] > 0
    assert 'llmjob_operator_jobs{phase="Succeeded"}' in samples


def _samples(text: str) -> dict[str, float]:
    found: dict[str, Any] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def test_api_errors_while_reconciling_reach_the_jobs_status(jobs: Jobs, venv_bin: str) -> None:
    # Admission rejects pods naming a PriorityClass that does not exist.
    jobs.create(standin_job("misprioritized", venv_bin, scheduling={"priorityClassName": "nope"}))
    status = jobs.wait(
        "misprioritized",
        lambda s: (condition(s, "ReconcileError") or {}).get("status") == "True",
        timeout=240,
        what="ReconcileError condition",
    )
    error = condition(status, "ReconcileError")
    assert error is not None
    assert "nope" in error["message"]
    assert jobs.pods("misprioritized") == []
