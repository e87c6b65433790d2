"""Spec policy: hostPath and Secret-backed passthrough are rejected unless the operator allows
them; the admission verdict names the field; spec-less updates are always admitted."""

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from llmjob_operator.api import (
    LLMTrainingJobSpec,
    PassthroughPolicy,
    admission_verdict,
    passthrough_violations,
    validate_job,
)
from llmjob_operator.crd import render_yaml
from llmjob_operator.settings import parse_settings
from tests.unit.specs import minimal_spec

DEFAULT = PassthroughPolicy()
PERMISSIVE = PassthroughPolicy(allow_host_path=True, allow_secrets=True)


def job(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "training.llmjob.dev/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": "j"},
        "spec": minimal_spec(**spec),
    }


def mounted(volume: dict[str, Any]) -> dict[str, Any]:
    return {"volumes": [volume], "volumeMounts": [{"name": volume["name"], "mountPath": "/x"}]}


# (case, spec overrides, the field the message must name, what allows it)
FORBIDDEN: list[tuple[str, dict[str, Any], str, PassthroughPolicy]] = [
    (
        "hostPath",
        mounted({"name": "h", "hostPath": {"path": "/var/run"}}),
        "volumes[0].hostPath",
        PassthroughPolicy(allow_host_path=True),
    ),
    (
        "secret volume",
        mounted({"name": "s", "secret": {"secretName": "creds"}}),
        "volumes[0].secret",
        PassthroughPolicy(allow_secrets=True),
    ),
    (
        "projected secret",
        mounted(
            {
                "name": "p",
                "projected": {"sources": [{"configMap": {"name": "c"}}, {"secret": {"name": "s"}}]},
            }
        ),
        "volumes[0].projected.sources[1].secret",
        PassthroughPolicy(allow_secrets=True),
    ),
    (
        "csi with a publish secret",
        mounted(
            {
                "name": "c",
                "csi": {"driver": "secrets.csi.example", "nodePublishSecretRef": {"name": "s"}},
            }
        ),
        "volumes[0].csi.nodePublishSecretRef",
        PassthroughPolicy(allow_secrets=True),
    ),
    (
        "cephfs secretRef",
        mounted({"name": "f", "cephfs": {"monitors": ["m"], "secretRef": {"name": "s"}}}),
        "volumes[0].cephfs.secretRef",
        PassthroughPolicy(allow_secrets=True),
    ),
    (
        "azureFile secretName",
        mounted({"name": "a", "azureFile": {"secretName": "s", "shareName": "x"}}),
        "volumes[0].azureFile.secretName",
        PassthroughPolicy(allow_secrets=True),
    ),
    (
        "env secretKeyRef",
        {"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
        "env[0].valueFrom.secretKeyRef",
        PassthroughPolicy(allow_secrets=True),
    ),
]


@pytest.mark.parametrize(
    ("overrides", "field", "allowing"), [c[1:] for c in FORBIDDEN], ids=[c[0] for c in FORBIDDEN]
)
def test_forbidden_passthrough_is_rejected_naming_the_field_unless_allowed(
    overrides: dict[str, Any], field: str, allowing: PassthroughPolicy
) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_job(job(**overrides), DEFAULT)
    assert field in str(caught.value)
    assert "--allow-" in str(caught.value), "the message says how to allow it"
    validate_job(job(**overrides), allowing)


def test_no_context_means_the_default_policy() -> None:
    hostpath = mounted({"name": "h", "hostPath": {"path": "/"}})
    with pytest.raises(ValidationError, match=r"volumes\[0\]\.hostPath"):
        LLMTrainingJobSpec.model_validate(minimal_spec(**hostpath))


def test_allowing_one_kind_does_not_allow_the_other() -> None:
    both = {
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "s", "secret": {}}],
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    }
    only_host = passthrough_violations(
        both["volumes"], both["env"], PassthroughPolicy(allow_host_path=True)
    )
    assert [p.split(":")[0] for p in only_host] == [
        "volumes[1].secret",
        "env[0].valueFrom.secretKeyRef",
    ]
    only_secrets = passthrough_violations(
        both["volumes"], both["env"], PassthroughPolicy(allow_secrets=True)
    )
    assert [p.split(":")[0] for p in only_secrets] == ["volumes[0].hostPath"]
    assert passthrough_violations(both["volumes"], both["env"], PERMISSIVE) == []


def test_harmless_sources_pass() -> None:
    volumes = [
        {"name": "d", "emptyDir": {}},
        {"name": "c", "configMap": {"name": "tokenizer"}},
        {"name": "p", "persistentVolumeClaim": {"claimName": "datasets"}},
        {
            "name": "t",
            "projected": {
                "sources": [{"serviceAccountToken": {"path": "t"}}, {"configMap": {"name": "c"}}]
            },
        },
    ]
    env = [
        {"name": "A", "value": "1"},
        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
        {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    assert passthrough_violations(volumes, env, DEFAULT) == []
    validate_job(job(volumes=volumes, env=env), DEFAULT)


def test_verdict_names_the_field_on_create_and_on_a_spec_change() -> None:
    verdict = admission_verdict(job(workers=0), None, DEFAULT)
    assert verdict is not None and verdict.startswith("spec.workers:")
    assert admission_verdict(job(), None, DEFAULT) is None
    changed = admission_verdict(job(training={"seqLen": 4096}), job(), DEFAULT)
    assert changed is not None and "training.seqLen" in changed


def test_updates_that_leave_the_spec_alone_are_admitted_even_for_an_invalid_job() -> None:
    # A job admitted before the webhook (or under a looser policy) must stay deletable and
    # labelable: finalizer removal and label edits do not touch the spec.
    old = job(workers=0)
    relabelled = {**old, "metadata": {"name": "j", "labels": {"team": "a"}}}
    assert admission_verdict(relabelled, old, DEFAULT) is None


def test_settings_default_to_rejecting_and_flags_allow() -> None:
    assert parse_settings([]).passthrough == DEFAULT
    assert parse_settings([]).webhook_cert_dir is None
    allowed = parse_settings(
        ["--allow-host-path-volumes", "--allow-secret-passthrough", "--webhook-cert-dir=/c"]
    )
    assert allowed.passthrough == PERMISSIVE
    assert allowed.webhook_cert_dir == "/c"


def checkpoint_rules() -> list[dict[str, str]]:
    crd = yaml.safe_load(render_yaml())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules: list[dict[str, str]] = spec["properties"]["checkpoint"]["x-kubernetes-validations"]
    return rules


def test_checkpoint_storage_is_immutable_and_nothing_else_is() -> None:
    transition = [r for r in checkpoint_rules() if "oldSelf" in r["rule"]]
    assert {r["fieldPath"] for r in transition} == {
        ".claimName",
        ".size",
        ".storageClassName",
        ".mountPath",
    }
    for rule in transition:
        assert f"checkpoint{rule['fieldPath']} is immutable" in rule["message"]
    crd_text = render_yaml()
    # Two mentions per rule, and no transition rule anywhere else but scheduling.gang's (the
    # job's PodGroup belongs to that scheduler): the rest stays mutable.
    assert crd_text.count("oldSelf") == 2 * (len(transition) + 1)
    assert "scheduling.gang is immutable" in crd_text


def test_a_malformed_mount_name_is_a_validation_error_not_a_crash() -> None:
    # Found by the admission fuzz: a TypeError here crashed the webhook (admitted under
    # Ignore) and the reconcile (InternalError) instead of naming the field.
    with pytest.raises(ValidationError, match=r"volumeMounts\[0\]\.name"):
        validate_job(job(volumeMounts=[{"name": {"a": 1}, "mountPath": "/x"}]), DEFAULT)
