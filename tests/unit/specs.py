"""Specs shared by the unit tests: a minimal valid job and the examples."""

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    """The smallest valid spec (camelCase, as a user writes it), with top-level overrides."""
    spec: dict[str, Any] = {
        "workers": 2,
        "gpusPerWorker": 0,
        "model": {"preset": "tiny"},
        "data": {"path": "/data/train.bin"},
        "training": {"seqLen": 128, "precision": "fp32"},
        "checkpoint": {"size": "1Gi"},
    }
    spec.update(overrides)
    return spec


def example_jobs() -> dict[str, dict[str, Any]]:
    """Every LLMTrainingJob document under examples/, by file stem."""
    jobs = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "LLMTrainingJob":
                jobs[path.stem] = doc
    return jobs
