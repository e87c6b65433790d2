"""The validating webhook on the local cluster, with the real API server and the pinned kubectl:
invalid specs are refused at `kubectl apply` naming the field, checkpoint storage is immutable,
a 1,000-spec fuzz is rejected at admission, and a spec that gets past admission (webhook off)
still fails with InvalidSpec and never gets a pod."""

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from llmjob_devcluster import kube
from llmjob_operator.api import GROUP, PLURAL, VERSION
from tests.integration.jobs import Jobs, condition, standin_job
from tests.integration.operator_process import OperatorProcess
from tests.integration.spec_fuzz import BASE_SPEC, invalid_specs, job
from tests.integration.webhook import serving_certificate, webhook_configuration

pytestmark = pytest.mark.integration

# `make test` runs the full 1,000; LLMJOB_FUZZ_SPECS shrinks it for a quick local run.
FUZZ_SPECS = int(os.environ.get("LLMJOB_FUZZ_SPECS", "1000"))
DENIED = "denied the request"
# Valid for the CRD schema, invalid for pydantic: only the webhook refuses it.
WEBHOOK_ONLY = job("probe", {**BASE_SPEC, "deepspeed": {"gradient_accumulation_steps": 8}})


@dataclass
class Admission:
    namespace: str
    operator: OperatorProcess
    configuration: dict[str, Any]
    custom: client.CustomObjectsApi
    registration: client.AdmissionregistrationV1Api

    def dry_run(self, body: dict[str, Any]) -> tuple[bool, str]:
        """(accepted, message) of a server-side dry-run create, as `kubectl apply` sends it
        (strict field validation)."""
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body,
                dry_run="All", field_validation="Strict",
            )  # fmt: skip
        except client.ApiException as error:
            assert error.status in (400, 422), f"{error.status}: {error.body}"
            return False, str(json.loads(error.body or "{}").get("message", ""))
        return True, ""

    def enable(self) -> None:
        name = self.configuration["metadata"]["name"]
        try:
            self.registration.read_validating_webhook_configuration(name)
        except client.ApiException as error:
            assert error.status == 404
            self.registration.create_validating_webhook_configuration(
                kube.model(client.V1ValidatingWebhookConfiguration, self.configuration)
            )
        self._wait(lambda: DENIED in self.dry_run(WEBHOOK_ONLY)[1], "the webhook to answer")

    def disable(self) -> None:
        name = self.configuration["metadata"]["name"]
        try:
            self.registration.delete_validating_webhook_configuration(name)
        except client.ApiException as error:
            assert error.status == 404
        self._wait(lambda: self.dry_run(WEBHOOK_ONLY)[0], "the webhook to be gone")

    def _wait(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, f"{what}\n{self.operator.tail()}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def admission(
    kubeconfig: Path,
    crd_installed: None,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Admission]:
    namespace = f"t-admission-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    workdir = tmp_path_factory.mktemp("admission")
    ca = serving_certificate(workdir / "tls")
    operator = OperatorProcess(
        kubeconfig, workdir / "operator.log", webhook_cert_dir=workdir / "tls"
    )
    operator.start()
    state = Admission(
        namespace,
        operator,
        webhook_configuration(f"llmjob-test-{namespace}", operator.webhook_port, ca, [namespace]),
        client.CustomObjectsApi(api_client),
        client.AdmissionregistrationV1Api(api_client),
    )
    try:
        yield state
    finally:
        state.disable()
        operator.stop()
        core.delete_namespace(namespace)
        print(f"\noperator log:\n{operator.tail(100)}")


def _with(**spec: Any) -> dict[str, Any]:
    return {**BASE_SPEC, **spec}


def _training(**fields: Any) -> dict[str, Any]:
    return {**BASE_SPEC["training"], **fields}


# (case, spec, text the message must contain); none of them is caught by the CRD schema.
REJECTED_AT_APPLY: list[tuple[str, dict[str, Any], str]] = [
    ("deepspeed contradicts training",
     _with(deepspeed={"train_micro_batch_size_per_gpu": 16}),
     "deepspeed.train_micro_batch_size_per_gpu"),
    ("deepspeed optimizer",
     _with(deepspeed={"optimizer": {"type": "Adam"}}), "deepspeed.optimizer"),
    ("seq beyond the model", _with(training=_training(seqLen=4096)), "training.seqLen"),
    ("min lr above lr", _with(training=_training(minLearningRate=0.1)), "training.minLearningRate"),
    ("warmup past the end", _with(training=_training(warmupSteps=500)), "warmupSteps"),
    ("mount of no volume",
     _with(volumeMounts=[{"name": "nope", "mountPath": "/x"}]), "volumeMounts[0].name"),
    ("mount over the config",
     _with(volumeMounts=[{"name": "scratch", "mountPath": "/etc/llmjob"}]),
     "volumeMounts[0].mountPath"),
    ("reserved volume name", _with(volumes=[{"name": "checkpoints", "emptyDir": {}}]), "volumes"),
    ("reserved env", _with(env=[{"name": "LLMJOB_ATTEMPT", "value": "7"}]), "LLMJOB_ATTEMPT"),
    ("hostPath volume",
     _with(volumes=[{"name": "scratch", "hostPath": {"path": "/"}}]), "volumes[0].hostPath"),
    ("secret volume",
     _with(volumes=[{"name": "scratch", "secret": {"secretName": "s"}}]), "volumes[0].secret"),
    ("projected secret",
     _with(volumes=[{"name": "scratch", "projected": {"sources": [{"secret": {"name": "s"}}]}}]),
     "volumes[0].projected.sources[0].secret"),
    ("env from a secret",
     _with(env=[{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
     "env[0].valueFrom.secretKeyRef"),
    ("args without command", _with(args=["--x"]), "command"),
    ("storage class with a claim",
     _with(checkpoint={"claimName": "c", "storageClassName": "fast"}),
     "checkpoint.storageClassName"),
    ("backoff order",
     _with(failurePolicy={"backoffSeconds": 60, "maxBackoffSeconds": 10}),
     "failurePolicy.maxBackoffSeconds"),
    ("fail on a timeout of zero",
     _with(failurePolicy={"failOnSchedulingTimeout": True}), "schedulingTimeoutSeconds"),
    ("gpus in resources", _with(resources={"limits": {"nvidia.com/gpu": 1}}), "gpusPerWorker"),
    ("repeated exit codes",
     _with(failurePolicy={"rules": [
         {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1, 1]}}]}),
     "values"),
    # The pod knobs (issue 11): this operator runs with the default policy (IPC_LOCK refused).
    ("SYS_ADMIN capability", _with(pod={"addCapabilities": ["SYS_ADMIN"]}),
     "spec.pod.addCapabilities: Value error, 'SYS_ADMIN' may not be added"),
    ("IPC_LOCK not allowed", _with(pod={"addCapabilities": ["IPC_LOCK"]}), "--allow-ipc-lock"),
    ("override of our label",
     _with(pod={"labels": {"training.llmjob.dev/job-name": "other"}}), "spec.pod.labels"),
    ("Kueue label by hand",
     _with(pod={"labels": {"kueue.x-k8s.io/queue-name": "q"}}), "spec.pod.labels"),
    ("bad label value", _with(pod={"labels": {"team": "a b"}}), "spec.pod.labels"),
    ("bad accelerator name",
     _with(resources={"gpuResourceName": "gpu"}), "resources.gpuResourceName"),
    ("kubernetes.io resource", _with(resources={"extended": {"kubernetes.io/x": 1}}),
     "resources.extended"),
    ("extended request without a limit",
     _with(resources={"requests": {"rdma/ib": 1}}), "resources.requests"),
    ("bad topology key", _with(scheduling={"topology": {"key": "a/b/c"}}),
     "spec.scheduling.topology.key"),
    ("bad service account", _with(pod={"serviceAccountName": "Trainer"}),
     "spec.pod.serviceAccountName"),
]  # fmt: skip


def kubectl_apply(kubectl: list[str], namespace: str, body: dict[str, Any]) -> Any:
    return subprocess.run(
        [*kubectl, "apply", "-n", namespace, "-f", "-"],
        input=yaml.safe_dump(body),
        capture_output=True,
        text=True,
        check=False,
    )


def test_kubectl_apply_refuses_invalid_specs_naming_the_field(
    admission: Admission, kubectl: list[str]
) -> None:
    admission.disable()
    for case, spec, _ in REJECTED_AT_APPLY:
        assert admission.dry_run(job("x", spec))[0], f"{case}: the CRD schema alone rejects it"
    admission.enable()
    for index, (case, spec, field) in enumerate(REJECTED_AT_APPLY):
        result = kubectl_apply(kubectl, admission.namespace, job(f"bad-{index}", spec))
        assert result.returncode != 0, f"{case}: accepted: {result.stdout}"
        assert DENIED in result.stderr, f"{case}: {result.stderr}"
        assert field in result.stderr, f"{case}: {result.stderr}"
    assert len(REJECTED_AT_APPLY) >= 15


def test_checkpoint_storage_is_immutable_and_the_rest_is_not(
    admission: Admission, kubectl: list[str]
) -> None:
    admission.enable()
    spec = _with(runPolicy={"suspend": True})
    created = kubectl_apply(kubectl, admission.namespace, job("steady", spec))
    assert created.returncode == 0 and "created" in created.stdout, created.stderr
    changes: list[tuple[dict[str, Any], str | None]] = [
        ({"checkpoint": {**spec["checkpoint"], "size": "2Gi"}}, "spec.checkpoint.size"),
        ({"checkpoint": {**spec["checkpoint"], "mountPath": "/ckpt"}}, "spec.checkpoint.mountPath"),
        (
            {"checkpoint": {**spec["checkpoint"], "storageClassName": "fast"}},
            "spec.checkpoint.storageClassName",
        ),
        ({"checkpoint": {"claimName": "other", "intervalSteps": 20}}, "spec.checkpoint"),
        # The job's PodGroup belongs to one gang scheduler.
        ({"scheduling": {**spec["scheduling"], "gang": "Volcano"}}, "spec.scheduling.gang"),
        # An update is checked by the webhook as a create is.
        ({"volumes": [{"name": "scratch", "hostPath": {"path": "/"}}]}, "volumes[0].hostPath"),
        # Everything else stays mutable (the operator starts a new attempt when it must).
        ({"checkpoint": {**spec["checkpoint"], "intervalSteps": 50, "keepLast": 5}}, None),
        ({"training": _training(maxSteps=200), "workers": 3}, None),
    ]
    for change, field in changes:
        result = kubectl_apply(kubectl, admission.namespace, job("steady", {**spec, **change}))
        if field is None:
            assert result.returncode == 0 and "configured" in result.stdout, result.stderr
        else:
            assert result.returncode != 0, f"{change}: accepted"
            assert field in result.stderr, result.stderr
    assert (
        "immutable"
        in kubectl_apply(
            kubectl, admission.namespace, job("steady", {**spec, "checkpoint": {"size": "3Gi"}})
        ).stderr
    )


def test_a_spec_that_gets_past_admission_still_fails_with_invalid_spec(
    admission: Admission, api_client: client.ApiClient, venv_bin: str
) -> None:
    admission.disable()
    jobs = Jobs(api_client, admission.namespace)
    hostile = {
        "hostile": (
            standin_job("hostile", venv_bin, volumes=[{"name": "h", "hostPath": {"path": "/"}}]),
            "volumes[0].hostPath",
        ),
        "rdma": (
            standin_job("rdma", venv_bin, pod={"addCapabilities": ["IPC_LOCK"]}),
            "spec.pod.addCapabilities",
        ),
    }
    for body, _ in hostile.values():
        jobs.create(body)
    for name, (_, field) in hostile.items():
        failure = condition(jobs.wait_phase(name, "Failed", timeout=60), "Failed")
        assert failure is not None and failure["reason"] == "InvalidSpec"
        assert field in failure["message"]
        assert jobs.pods(name) == []


def _rejected_fraction(
    admission: Admission, specs: list[dict[str, Any]]
) -> tuple[float, list[dict[str, Any]]]:
    def send(indexed: tuple[int, dict[str, Any]]) -> tuple[bool, str]:
        return admission.dry_run(job(f"fuzz-{indexed[0]}", indexed[1]))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(send, enumerate(specs)))
    accepted = [spec for spec, (ok, _) in zip(specs, results, strict=True) if ok]
    messages = [message for ok, message in results if not ok]
    assert all("spec" in m or "metadata" in m for m in messages), "a message names no field"
    return 1 - len(accepted) / len(specs), accepted


def test_fuzzed_invalid_specs_are_rejected_at_admission(admission: Admission) -> None:
    specs = invalid_specs(FUZZ_SPECS)
    admission.disable()
    started = time.monotonic()
    schema_only, _ = _rejected_fraction(admission, specs)
    admission.enable()
    with_webhook, accepted = _rejected_fraction(admission, specs)
    print(
        f"\nadmission fuzz: {len(specs)} invalid specs; rejected by the CRD schema alone "
        f"{schema_only:.1%}, with the webhook {with_webhook:.1%} "
        f"({time.monotonic() - started:.0f}s for both passes)"
    )
    assert with_webhook >= 0.99, json.dumps(accepted[:5], indent=1)
