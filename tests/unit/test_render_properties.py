"""Property: any valid spec renders pods whose GPU requests, slots and world size agree."""

import json

import pytest
from deepspeed.launcher.runner import fetch_hostfile
from hypothesis import given, settings
from hypothesis import strategies as st

from llmjob_operator.api import LLMTrainingJobSpec
from llmjob_operator.render import JobRef, RenderSettings, render
from tests.unit.specs import minimal_spec

JOB = JobRef(name="prop", namespace="ns", uid="u")


@st.composite
def specs(draw: st.DrawFn) -> LLMTrainingJobSpec:
    gpus = draw(st.sampled_from([0, 1, 2, 4, 8]))
    overrides: dict[str, object] = {
        "workers": draw(st.integers(1, 64)),
        "gpusPerWorker": gpus,
        "training": {
            "seqLen": draw(st.integers(8, 256)),
            "microBatchSize": draw(st.integers(1, 16)),
            "gradientAccumulationSteps": draw(st.integers(1, 8)),
            "zeroStage": draw(st.integers(0, 3)),
            "precision": draw(st.sampled_from(["bf16", "fp16", "fp32"])),
        },
    }
    if gpus == 0 and draw(st.booleans()):
        overrides["procsPerWorker"] = draw(st.integers(1, 8))
    return LLMTrainingJobSpec.model_validate(minimal_spec(**overrides))


@settings(max_examples=150, deadline=None)
@given(spec=specs())
def test_gpus_slots_and_world_size_agree(
    spec: LLMTrainingJobSpec, tmp_path_factory: pytest.TempPathFactory
) -> None:
    desired = render(JOB, spec, RenderSettings(default_image="img"), attempt=1)

    assert len(desired.pods) == spec.workers
    gpu_requests = [
        pod["spec"]["containers"][0].get("resources", {}).get("requests", {})
        for pod in desired.pods
    ]
    gpu_requests = [int(requests.get("nvidia.com/gpu", 0)) for requests in gpu_requests]
    assert set(gpu_requests) == {spec.gpus_per_worker}

    path = tmp_path_factory.mktemp("h") / "hostfile"
    path.write_text(desired.config_map["data"]["hostfile"])
    slots = fetch_hostfile(str(path))
    assert len(slots) == spec.workers
    if spec.gpus_per_worker:
        assert set(slots.values()) == {spec.gpus_per_worker}
    world_size = sum(slots.values())

    ds = json.loads(desired.config_map["data"]["ds_config.json"])
    training = spec.training
    assert ds["train_batch_size"] == (
        training.micro_batch_size * training.gradient_accumulation_steps * world_size
    )
    assert ds["zero_optimization"]["stage"] == training.zero_stage
