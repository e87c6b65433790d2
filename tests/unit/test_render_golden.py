"""Each example renders to the reviewed objects stored under golden/.

After an intended change: `UPDATE_GOLDEN=1 make test-unit`, then review the diff in git.
"""

import difflib
import os
from pathlib import Path

import pytest
import yaml

from llmjob_operator.api import PassthroughPolicy, validate_job
from llmjob_operator.render import JobRef, RenderSettings, render
from tests.unit.specs import example_jobs

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = RenderSettings(default_image="llmjob/trainer:golden")
# What the examples' headers ask of the operator (gpu-rdma: specPolicy.allowIpcLock).
EXAMPLE_POLICY = PassthroughPolicy(allow_ipc_lock=True)


class _ReviewableDumper(yaml.SafeDumper):
    """Multi-line strings (hostfile, train.json) as literal blocks: diffs read line by line."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReviewableDumper.add_representer(str, _represent_str)


def rendered_yaml(document: dict[str, object]) -> str:
    job = validate_job(document, EXAMPLE_POLICY)
    ref = JobRef(name=job.metadata["name"], namespace="ml-team", uid="0000-golden-uid")
    desired = render(ref, job.spec, SETTINGS, attempt=1)
    return yaml.dump_all(desired.all, Dumper=_ReviewableDumper, sort_keys=False, width=100)


@pytest.mark.parametrize("name", sorted(example_jobs()))
def test_example_renders_to_golden(name: str) -> None:
    actual = rendered_yaml(example_jobs()[name])
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(actual)
    expected = golden.read_text()
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"golden/{name}.yaml",
            tofile="rendered",
        )
    )
    assert not diff, f"rendering changed (UPDATE_GOLDEN=1 to accept):\n{diff}"


def test_examples_cover_cpu_and_gpu() -> None:
    jobs = {name: validate_job(doc, EXAMPLE_POLICY) for name, doc in example_jobs().items()}
    assert any(j.spec.gpus_per_worker == 0 and j.spec.workers == 2 for j in jobs.values())
    assert any(j.spec.gpus_per_worker == 8 and j.spec.workers == 4 for j in jobs.values())
