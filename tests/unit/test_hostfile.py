"""The rendered hostfile parses with DeepSpeed's own parser, in rank order."""

from pathlib import Path

import pytest
from deepspeed.launcher.runner import fetch_hostfile

from llmjob_operator.api import LLMTrainingJobSpec
from llmjob_operator.render import JobRef, hostfile
from tests.unit.specs import minimal_spec


@pytest.mark.parametrize(
    ("workers", "gpus", "procs"), [(1, 0, None), (2, 0, 1), (3, 0, 4), (4, 8, None), (16, 1, None)]
)
def test_deepspeed_parses_the_hostfile_in_worker_order(
    tmp_path: Path, workers: int, gpus: int, procs: int | None
) -> None:
    overrides: dict[str, object] = {"workers": workers, "gpusPerWorker": gpus}
    if procs is not None:
        overrides["procsPerWorker"] = procs
    spec = LLMTrainingJobSpec.model_validate(minimal_spec(**overrides))
    job = JobRef(name="gpt", namespace="research", uid="u")
    path = tmp_path / "hostfile"
    path.write_text(hostfile(job, spec))

    parsed = fetch_hostfile(str(path))

    assert list(parsed) == [f"gpt-worker-{i}.gpt.research.svc" for i in range(workers)]
    assert set(parsed.values()) == {spec.slots_per_worker}
    assert sum(parsed.values()) == spec.world_size
