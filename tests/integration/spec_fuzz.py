"""Mutated job specs that the operator's own validation rejects, for the admission fuzz.

Pure and seeded: the same seed gives the same specs. A mutation is generic (any field set to a
value of the wrong kind or range, deleted, or joined by an unknown key) or aimed at what a
structural schema cannot see (cross-field rules, passthrough items, DeepSpeed keys, pod knobs).
A mutant counts only if `validate_job` rejects it. `null` is not among the values: the API
server drops a null it has no schema for and applies the default, so the stored spec is not the
one sent.
"""

import copy
import random
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from llmjob_operator.api import API_VERSION, KIND, PassthroughPolicy, validate_job

# Every section filled in, so that mutations reach every part of the API.
BASE_SPEC: dict[str, Any] = {
    "workers": 2,
    "gpusPerWorker": 0,
    "procsPerWorker": 1,
    "resources": {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "2Gi"},
        "gpuResourceName": "amd.com/gpu",
        "extended": {"rdma/ib": 1},
    },
    "model": {"preset": "tiny"},
    "data": {"path": "/data/train.bin", "validationPath": "/data/val.bin"},
    "training": {
        "maxSteps": 100,
        "seqLen": 64,
        "microBatchSize": 2,
        "gradientAccumulationSteps": 2,
        "learningRate": 0.001,
        "warmupSteps": 10,
        "minLearningRate": 0.0001,
        "precision": "fp32",
        "zeroStage": 2,
    },
    "deepspeed": {"zero_optimization": {"overlap_comm": True}},
    "checkpoint": {"size": "1Gi", "intervalSteps": 20, "keepLast": 2},
    "failurePolicy": {
        "maxRestarts": 3,
        "backoffSeconds": 5,
        "maxBackoffSeconds": 60,
        "rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}],
    },
    "runPolicy": {"activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 600},
    "scheduling": {
        "nodeSelector": {"pool": "cpu"},
        "priorityClassName": "batch",
        "topology": {"key": "topology.kubernetes.io/zone"},
    },
    "pod": {
        "labels": {"team": "nlp"},
        "annotations": {"k8s.v1.cni.cncf.io/networks": "rdma-net"},
        "serviceAccountName": "trainer",
        "imagePullSecrets": [{"name": "registry"}],
    },
    "volumes": [{"name": "scratch", "emptyDir": {}}],
    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    "env": [{"name": "FOO", "value": "1"}],
    "metricsPort": 9400,
}
VALUES: list[Any] = [
    -1, 0, 1, 3, 7, 4096, 10**9, 2.5, "", "x", "fp8", "1Gi", "/abs", "rel/path",
    True, False, [], {}, {"k": "v"}, [1, 2], ["x"],
]  # fmt: skip
UNKNOWN_KEYS = ["bogus", "learningRat", "worker", "replicas", "size_gb"]
DEEPSPEED: list[dict[str, Any]] = [
    {"train_micro_batch_size_per_gpu": 16},
    {"gradient_accumulation_steps": 8},
    {"train_batch_size": 7},
    {"zero_optimization": {"stage": 3}},
    {"optimizer": {"type": "Adam"}},
    {"fp16": {"enabled": True}},
    {"bf16": {"enabled": True}},
    {"scheduler": {"type": "WarmupLR"}},
]
VOLUMES: list[dict[str, Any]] = [
    {"name": "h", "hostPath": {"path": "/"}},
    {"name": "s", "secret": {"secretName": "x"}},
    {"name": "p", "projected": {"sources": [{"secret": {"name": "x"}}]}},
    {"name": "c", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "x"}}},
    {"name": "checkpoints", "emptyDir": {}},
    {"name": "scratch", "emptyDir": {}},
    {"emptyDir": {}},
]
MOUNTS: list[dict[str, Any]] = [
    {"name": "nope", "mountPath": "/x"},
    {"name": "scratch", "mountPath": "relative"},
    {"name": "scratch", "mountPath": "/etc/llmjob"},
    {"name": "scratch", "mountPath": "/checkpoints"},
    {"name": "scratch"},
]
ENV: list[dict[str, Any]] = [
    {"name": "LLMJOB_ATTEMPT", "value": "2"},
    {"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    {"value": "x"},
    {"name": ""},
]
# What a worker pod may not get (spec.pod): capabilities, the operator's keys, bad names.
POD: list[dict[str, Any]] = [
    {"addCapabilities": ["SYS_ADMIN"]},
    {"addCapabilities": ["IPC_LOCK"]},
    {"labels": {"training.llmjob.dev/attempt": "9"}},
    {"labels": {"app.kubernetes.io/managed-by": "me"}},
    {"annotations": {"scheduling.k8s.io/group-name": "g"}},
    {"serviceAccountName": "Bad_Name"},
    {"imagePullSecrets": [{"name": "r"}, {"name": "r"}]},
]
# Numeric fields whose relations pydantic checks (order, products, ranges across fields).
COUPLED = [
    ("training", "maxSteps"),
    ("training", "warmupSteps"),
    ("training", "learningRate"),
    ("training", "minLearningRate"),
    ("training", "microBatchSize"),
    ("training", "globalBatchSize"),
    ("training", "seqLen"),
    ("failurePolicy", "backoffSeconds"),
    ("failurePolicy", "maxBackoffSeconds"),
    ("failurePolicy", "schedulingTimeoutSeconds"),
]

Path = tuple[str | int, ...]


def job(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def is_invalid(spec: dict[str, Any]) -> bool:
    """Rejected by the operator's own validation, with the default (strict) policy."""
    try:
        validate_job(job("fuzz", spec), PassthroughPolicy())
    except ValidationError:
        return True
    return False


def _paths(node: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(node, dict):
        for key, child in node.items():
            yield (*prefix, key), child
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield (*prefix, index), child
            yield from _paths(child, (*prefix, index))


def _parent(spec: dict[str, Any], path: Path) -> Any:
    node: Any = spec
    for part in path[:-1]:
        node = node[part]
    return node


def _mutate(spec: dict[str, Any], rng: random.Random) -> None:
    kind = rng.choices(
        ["value", "delete", "unknown", "passthrough", "coupled"], [40, 10, 15, 20, 15]
    )[0]
    paths = list(_paths(spec))
    if kind == "value":
        path, _ = rng.choice(paths)
        _parent(spec, path)[path[-1]] = copy.deepcopy(rng.choice(VALUES))
    elif kind == "delete":
        path, _ = rng.choice([p for p in paths if isinstance(p[0][-1], str)])
        del _parent(spec, path)[path[-1]]
    elif kind == "unknown":
        objects = [spec] + [node for _, node in paths if isinstance(node, dict)]
        rng.choice(objects)[rng.choice(UNKNOWN_KEYS)] = rng.choice(VALUES[:8])
    elif kind == "passthrough":
        section, pool = rng.choice(
            [
                ("volumes", VOLUMES),
                ("volumeMounts", MOUNTS),
                ("env", ENV),
                ("deepspeed", DEEPSPEED),
                ("pod", POD),
            ]
        )
        item = copy.deepcopy(rng.choice(pool))
        if section in ("deepspeed", "pod"):
            spec.setdefault(section, {}).update(item)
        else:
            spec.setdefault(section, []).append(item)
    else:
        section, field = rng.choice(COUPLED)
        if isinstance(spec.get(section), dict):
            spec[section][field] = rng.choice([0, 1, 2, 5, 10, 100, 1000, 10**6, 0.5, 1e-5])


def invalid_specs(count: int, seed: int = 14) -> list[dict[str, Any]]:
    """`count` distinct mutants of BASE_SPEC (one or two mutations each), all invalid."""
    rng = random.Random(seed)
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(found) < count:
        spec = copy.deepcopy(BASE_SPEC)
        for _ in range(rng.choice([1, 1, 2])):
            _mutate(spec, rng)
        key = repr(spec)
        if key not in seen and is_invalid(spec):
            seen.add(key)
            found.append(spec)
    return found
