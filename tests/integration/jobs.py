"""Helpers for the operator's integration tests: submit jobs, wait on status, watch gangs."""

import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from urllib3.exceptions import ProtocolError

from llmjob_devcluster.layout import IMAGE_SOURCE_DIR
from llmjob_operator.api import GROUP, PLURAL, VERSION
from llmjob_operator.render import ATTEMPT_LABEL, JOB_NAME_LABEL

# As pods see it: the checkout is the image, at IMAGE_SOURCE_DIR in every pod.
STANDIN_BIN = f"{IMAGE_SOURCE_DIR}/tests/integration/standin"


def standin_env(venv_bin: str, **knobs: str | int) -> list[dict[str, str]]:
    """Env that makes workers run the stand-in launcher (see standin/llmjob-launch)."""
    path = f"{STANDIN_BIN}:{venv_bin}:/usr/local/bin:/usr/bin:/bin"
    return [{"name": "PATH", "value": path}] + [
        {"name": f"STANDIN_{name.upper()}", "value": str(value)} for name, value in knobs.items()
    ]


def standin_job(name: str, venv_bin: str, workers: int = 2, **spec: Any) -> dict[str, Any]:
    knobs = spec.pop("standin", {})
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LLMTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "workers": workers,
            "gpusPerWorker": 0,
            "model": {"preset": "tiny"},
            "data": {"path": "/data/none.bin"},
            "training": {"seqLen": 64, "precision": "fp32", "maxSteps": 5, "warmupSteps": 0},
            "checkpoint": {"size": "10Mi", "saveTimeoutSeconds": 30},
            "failurePolicy": {"backoffSeconds": 1, "maxBackoffSeconds": 2},
            "env": standin_env(venv_bin, **knobs),
            **spec,
        },
    }
    return body


class Jobs:
    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return created

    def get(self, name: str) -> dict[str, Any]:
        job: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return job

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get(name)
            except client.ApiException as error:
                if error.status == 404:
                    return
                raise
            time.sleep(0.5)
        raise AssertionError(f"{name} still exists after {timeout}s")

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 300,
        what: str = "condition",
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status(name)
            if predicate(status):
                return status
            time.sleep(0.5)
        pods = self.describe_pods(name)
        raise AssertionError(f"{name}: no {what} after {timeout}s; status: {status}; pods: {pods}")

    def describe_pods(self, name: str) -> list[str]:
        """One line per pod of the job, for a failed wait's message: where a gang is stuck."""
        lines = []
        for pod in self.pods(name):
            waiting = [
                s.state.waiting.reason
                for s in pod.status.container_statuses or []
                if s.state and s.state.waiting
            ]
            lines.append(
                f"{pod.metadata.name} attempt={pod.metadata.labels.get(ATTEMPT_LABEL)} "
                f"uid={pod.metadata.uid[:8]} phase={pod.status.phase} node={pod.spec.node_name} "
                f"deleting={pod.metadata.deletion_timestamp is not None} waiting={waiting}"
            )
        return lines

    def wait_phase(self, name: str, phase: str, timeout: float = 300) -> dict[str, Any]:
        return self.wait(name, lambda s: s.get("phase") == phase, timeout, f"phase {phase}")

    def pods(self, name: str) -> list[client.V1Pod]:
        items: list[client.V1Pod] = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{JOB_NAME_LABEL}={name}"
        ).items
        return items

    def events(self, name: str) -> list[client.CoreV1Event]:
        items: list[client.CoreV1Event] = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return items


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


class GangWatch:
    """Watches a job's pods and records any moment two attempts' pods coexisted."""

    def __init__(self, api_client: client.ApiClient, namespace: str, job: str) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.job = job
        self.live: dict[str, str] = {}
        self.overlaps: list[str] = []
        self.attempts_seen: set[str] = set()
        self._watch = watch.Watch()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._follow()
        except ProtocolError:
            # stop() closes the stream under the reader; anything else is a real failure.
            if not self._stopping:
                raise

    def _follow(self) -> None:
        stream = self._watch.stream(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=f"{JOB_NAME_LABEL}={self.job}",
            timeout_seconds=600,
        )
        for event in stream:
            pod = event["object"]
            name = pod.metadata.name
            attempt = pod.metadata.labels[ATTEMPT_LABEL]
            self.attempts_seen.add(attempt)
            if event["type"] == "DELETED":
                self.live.pop(name, None)
            else:
                self.live[name] = attempt
            if len(set(self.live.values())) > 1:
                self.overlaps.append(f"{event['type']} {name}: live={dict(self.live)}")

    def stop(self) -> None:
        self._stopping = True
        self._watch.stop()
