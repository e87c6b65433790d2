"""A job that names a Kueue queue runs each attempt's gang as one Kueue plain pod group."""

import dataclasses
import re
from typing import Any

from llmjob_operator.api import LLMTrainingJobSpec
from llmjob_operator.render import (
    KUEUE_POD_GROUP_LABEL,
    KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    KUEUE_RETRIABLE_IN_GROUP_ANNOTATION,
    JobRef,
    RenderSettings,
    pod_group_name,
    render,
)
from tests.unit.specs import minimal_spec

JOB = JobRef(name="llama", namespace="team-a", uid="0f1e2d3c-aaaa-bbbb", queue_name="gpu-queue")
SETTINGS = RenderSettings(default_image="default/trainer:1")
# A label value (and the Workload's name, a DNS subdomain): what Kueue validates a group name by.
LABEL_VALUE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pods(job: JobRef = JOB, attempt: int = 1, **overrides: Any) -> list[dict[str, Any]]:
    spec = LLMTrainingJobSpec.model_validate(minimal_spec(**overrides))
    return render(job, spec, SETTINGS, attempt).pods


def test_every_worker_joins_the_attempts_pod_group_in_the_jobs_queue() -> None:
    gang = pods(workers=3, attempt=2)
    for pod in gang:
        labels = pod["metadata"]["labels"]
        assert labels[KUEUE_QUEUE_LABEL] == "gpu-queue"
        assert labels[KUEUE_POD_GROUP_LABEL] == "llama-0f1e2d3c-2"
        kueue = {k: v for k, v in pod["metadata"]["annotations"].items() if "kueue" in k}
        assert kueue == {
            KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION: "3",
            # The group ends with its attempt: Kueue finishes the Workload once all pods end.
            KUEUE_RETRIABLE_IN_GROUP_ANNOTATION: "false",
        }


def test_each_attempt_is_its_own_group_and_a_recreated_job_another() -> None:
    first, second = pods(attempt=1)[0], pods(attempt=2)[0]
    assert (
        first["metadata"]["labels"][KUEUE_POD_GROUP_LABEL]
        != second["metadata"]["labels"][KUEUE_POD_GROUP_LABEL]
    )
    recreated = dataclasses.replace(JOB, uid="99999999-cccc")
    assert pod_group_name(recreated, 1) != pod_group_name(JOB, 1)


def test_a_gang_recreated_within_an_attempt_rejoins_the_same_group() -> None:
    # Kueue never recreates pods: the operator does (a missing worker, an operator restart),
    # and the pods it makes for the same attempt must land in the same group.
    assert pods(attempt=4)[0]["metadata"]["labels"] == pods(attempt=4)[0]["metadata"]["labels"]
    assert pod_group_name(JOB, 4) == pod_group_name(JOB, 4)


def test_group_names_are_valid_label_values_for_the_longest_job_names() -> None:
    longest = dataclasses.replace(JOB, name="a" * 50)
    for attempt in (1, 999, 123456):
        name = pod_group_name(longest, attempt)
        assert len(name) <= 63 and LABEL_VALUE.match(name), name
        assert name.endswith(f"-{attempt}")


def test_a_job_without_a_queue_gets_no_kueue_metadata() -> None:
    (pod,) = pods(job=dataclasses.replace(JOB, queue_name=None), workers=1)
    assert not any(key.startswith("kueue.x-k8s.io/") for key in pod["metadata"]["labels"])
    assert not any(key.startswith("kueue.x-k8s.io/") for key in pod["metadata"]["annotations"])
