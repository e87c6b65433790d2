"""The committed CRD is what api.py generates, and it is a structural schema."""

from pathlib import Path
from typing import Any

import yaml

from llmjob_operator.crd import render_yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILES = [
    REPO / "crds" / "llmtrainingjobs.training.llmjob.dev.yaml",
    REPO / "helm" / "llmjob-operator" / "crds" / "llmtrainingjobs.training.llmjob.dev.yaml",
]
# Free-form passthrough: the raw DeepSpeed config, model config overrides, and core/v1 objects
# (volumes, mounts, env, tolerations, affinity) that the API server validates on the pod.
PASSTHROUGH = {
    "spec.deepspeed",
    "spec.model.config",
    "spec.volumes[]",
    "spec.volumeMounts[]",
    "spec.env[]",
    "spec.scheduling.tolerations[]",
    "spec.scheduling.affinity",
}


def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILES[0].read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += walk(child, f"{path}.{name}" if path else name)
    if "items" in node:
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_committed_crds_are_in_sync_with_the_api() -> None:
    generated = render_yaml()
    for path in CRD_FILES:
        assert path.read_text() == generated, f"{path} is stale: run `make crds`"


def test_every_node_is_typed() -> None:
    for path, node in walk(schema(), ""):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        for option in node.get("anyOf", []):
            assert set(option) == {"type"}, f"{path}: anyOf may only name types"


def test_unknown_fields_are_kept_only_in_passthrough_parts() -> None:
    preserved = {
        p for p, node in walk(schema(), "") if node.get("x-kubernetes-preserve-unknown-fields")
    }
    assert preserved == PASSTHROUGH


def test_every_field_has_a_description() -> None:
    for path, node in walk(schema(), ""):
        if path and not path.endswith(("[]", "{}")) and path != "metadata":
            assert node.get("description"), f"{path} has no description"


def test_names_columns_and_status_subresource() -> None:
    crd = yaml.safe_load(CRD_FILES[0].read_text())
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["llmjob", "ltj"]
    assert names["categories"] == ["llm"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Workers", "Step", "Loss", "Restarts", "Age"]


def test_cel_rules_mirror_cross_field_checks() -> None:
    spec = schema()["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("globalBatchSize" in r for r in rules)
    checkpoint_rules = spec["properties"]["checkpoint"]["x-kubernetes-validations"]
    assert checkpoint_rules[0]["rule"] == "has(self.claimName) != has(self.size)"
