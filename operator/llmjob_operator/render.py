"""PURE: an LLMTrainingJob's spec -> the Kubernetes objects it should own (DESIGN §3).

No I/O and no clients: plain dicts in, plain dicts out, ready for server-side apply.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from llmjob_operator.api import API_VERSION, KIND, LLMTrainingJobSpec
from llmjob_trainer.config import deepspeed_config

LABEL_PREFIX = "training.llmjob.dev"
JOB_NAME_LABEL = f"{LABEL_PREFIX}/job-name"
WORKER_INDEX_LABEL = f"{LABEL_PREFIX}/worker-index"
ATTEMPT_LABEL = f"{LABEL_PREFIX}/attempt"
# The hash of what an applied object was rendered from: a changed hash is a changed spec.
SPEC_HASH_ANNOTATION = f"{LABEL_PREFIX}/spec-hash"
# On every worker pod: the hash of what the job's owner wrote that shapes its pods, not of the
# rendered pod. An operator upgrade that renders pods differently (a new field, a new default
# image) then leaves running gangs alone, and their next attempt gets the new rendering; only
# an edit of the job restarts one (reconcile.spec_changed).
POD_INPUTS_HASH_ANNOTATION = f"{LABEL_PREFIX}/pod-inputs-hash"
# Kueue's plain pod groups: a job labelled with the queue label runs each attempt's gang as one
# group (one Workload) in that LocalQueue.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_RETRIABLE_IN_GROUP_ANNOTATION = "kueue.x-k8s.io/retriable-in-group"
# The scheduling gate Kueue's webhook puts on the pods of a group until it admits the group.
KUEUE_ADMISSION_GATE = "kueue.x-k8s.io/admission"

CONFIG_DIR = "/etc/llmjob"
HOSTFILE_KEY = "hostfile"
TRAIN_CONFIG_KEY = "train.json"
DEEPSPEED_CONFIG_KEY = "ds_config.json"
CACHE_DIR = "/cache"
# Kubernetes' default, named: the trainer is told it (LLMJOB_TERMINATION_MESSAGE_PATH).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
RENDEZVOUS_PORT = 29500
CONTAINER_NAME = "trainer"
# The unprivileged user of the trainer image (trainer_image/Dockerfile).
TRAINER_UID = 1000
# Time for the trainer's own SIGTERM path (finish the step, commit) plus process exit.
GRACE_MARGIN_SECONDS = 30


@dataclass(frozen=True)
class JobRef:
    """What rendering needs of the job object besides its spec."""

    name: str
    namespace: str
    uid: str
    queue_name: str | None = None
    """The job's kueue.x-k8s.io/queue-name label: its gangs are admitted by Kueue."""


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide settings that shape rendered objects."""

    default_image: str


@dataclass(frozen=True)
class DesiredObjects:
    """Everything a job owns for one attempt."""

    service: dict[str, Any]
    config_map: dict[str, Any]
    pods: list[dict[str, Any]]
    claim: dict[str, Any] | None = None
    pod_group: dict[str, Any] | None = None
    """A gang scheduler's PodGroup (scheduling.gang): before the pods, which name it."""
    all: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        extra = [self.claim] if self.claim else []
        group = [self.pod_group] if self.pod_group else []
        object.__setattr__(self, "all", [*extra, self.service, self.config_map, *group, *self.pods])


def worker_name(job: str, index: int) -> str:
    return f"{job}-worker-{index}"


def config_map_name(job: str) -> str:
    return f"{job}-config"


def claim_name(job: JobRef, spec: LLMTrainingJobSpec) -> str:
    return spec.checkpoint.claim_name or f"{job.name}-checkpoints"


def worker_host(job: JobRef, index: int) -> str:
    """The stable DNS name of a worker through the job's headless Service."""
    return f"{worker_name(job.name, index)}.{job.name}.{job.namespace}.svc"


def job_labels(job: JobRef) -> dict[str, str]:
    return {
        JOB_NAME_LABEL: job.name,
        "app.kubernetes.io/name": "llmjob-worker",
        "app.kubernetes.io/managed-by": "llmjob-operator",
    }


def owner_reference(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    job: JobRef, name: str, owned: bool = True, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.namespace,
        "labels": {**job_labels(job), **(labels or {})},
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(job)]
    return meta


def hostfile(job: JobRef, spec: LLMTrainingJobSpec) -> str:
    """One `<host> slots=<n>` line per worker, in worker-index (= node rank) order."""
    return "".join(
        f"{worker_host(job, i)} slots={spec.slots_per_worker}\n" for i in range(spec.workers)
    )


def pod_group_name(job: JobRef, attempt: int) -> str:
    """The Kueue pod group (and Workload) of one attempt's gang, and its native PodGroup
    (scheduling.gang Native).

    One group per attempt, not per job: a worker's pod name is stable across attempts (its DNS
    name), so a new gang is created only once the old one is gone, and Kueue keeps the
    finalizer of a group's terminated pods until replacements *in that group* exist. A group
    that outlived its attempt would either never let its old pods go or be emptied, and its
    Workload deleted, between two gangs. Instead every attempt's pods say they are not
    retried in their group (kueue.x-k8s.io/retriable-in-group: "false"): when the attempt's
    pods have all ended, Kueue marks its Workload finished, releases the quota and the pods,
    and the next attempt queues as a new Workload. A job waiting out a restart backoff holds
    no quota. The job's UID keeps a re-created job of the same name out of an old Workload."""
    suffix = f"-{job.uid[:8]}-{attempt}"
    return job.name[: 63 - len(suffix)] + suffix


def kueue_pod_metadata(
    job: JobRef, spec: LLMTrainingJobSpec, attempt: int
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that make a worker pod a member of its attempt's Kueue pod group;
    empty unless the job names a queue."""
    if not job.queue_name:
        return {}, {}
    labels = {
        KUEUE_QUEUE_LABEL: job.queue_name,
        KUEUE_POD_GROUP_LABEL: pod_group_name(job, attempt),
    }
    annotations = {
        KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION: str(spec.workers),
        KUEUE_RETRIABLE_IN_GROUP_ANNOTATION: "false",
    }
    return labels, annotations


def render_service(job: JobRef, spec: LLMTrainingJobSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, job.name),
        "spec": {
            "clusterIP": "None",
            # Ranks resolve each other before any is Ready: rendezvous comes first.
            "publishNotReadyAddresses": True,
            "selector": {JOB_NAME_LABEL: job.name},
            "ports": [
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT},
                {"name": "metrics", "port": spec.metrics_port, "targetPort": spec.metrics_port},
            ],
        },
    }


def render_config_map(job: JobRef, spec: LLMTrainingJobSpec) -> dict[str, Any]:
    run_config = spec.run_config(job.name)
    ds_config = deepspeed_config(spec.training, spec.world_size, spec.deepspeed)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, config_map_name(job.name)),
        "data": {
            HOSTFILE_KEY: hostfile(job, spec),
            TRAIN_CONFIG_KEY: run_config.model_dump_json(by_alias=True, exclude_none=True, indent=2)
            + "\n",
            DEEPSPEED_CONFIG_KEY: json.dumps(ds_config, indent=2, sort_keys=True) + "\n",
        },
    }


def render_claim(job: JobRef, spec: LLMTrainingJobSpec) -> dict[str, Any] | None:
    checkpoint = spec.checkpoint
    if checkpoint.size is None:
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": [checkpoint.access_mode],
        "resources": {"requests": {"storage": quantity(checkpoint.size)}},
    }
    if checkpoint.storage_class_name is not None:
        claim_spec["storageClassName"] = checkpoint.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        # Retained claims outlive the job: deleting a job must not delete its checkpoints.
        "metadata": _metadata(
            job, claim_name(job, spec), owned=checkpoint.reclaim_policy == "Delete"
        ),
        "spec": claim_spec,
    }


def launcher_args(job: JobRef, spec: LLMTrainingJobSpec, index: int) -> list[str]:
    """`llmjob-launch` arguments: it validates the hostfile and runs DeepSpeed's launcher in
    --no_ssh mode as this node rank, rendezvousing at worker 0."""
    args = [
        f"--hostfile={CONFIG_DIR}/{HOSTFILE_KEY}",
        f"--node-rank={index}",
        f"--master-addr={worker_host(job, 0)}",
        f"--master-port={RENDEZVOUS_PORT}",
        f"--train-config={CONFIG_DIR}/{TRAIN_CONFIG_KEY}",
        f"--deepspeed-config={CONFIG_DIR}/{DEEPSPEED_CONFIG_KEY}",
    ]
    if spec.command:
        args += ["--", *spec.command, *spec.args]
    return args


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def content_hash(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def pod_inputs_hash(job: JobRef, spec: LLMTrainingJobSpec) -> str:
    """What POD_INPUTS_HASH_ANNOTATION holds. Values equal to their default are left out, so a
    field added by an upgrade (at its default) changes no hash. failurePolicy and runPolicy
    never reach a pod: editing them restarts nothing."""
    shaping = spec.model_dump(
        mode="json", by_alias=True, exclude_defaults=True, exclude={"failure_policy", "run_policy"}
    )
    return content_hash({"spec": shaping, "queueName": job.queue_name})


def worker_env(
    job: JobRef, spec: LLMTrainingJobSpec, index: int, attempt: int, config_hash: str
) -> list[Any]:
    return [
        {"name": "LLMJOB_JOB_NAME", "value": job.name},
        # The run a checkpoint belongs to: a job re-created under the same name is another run.
        {"name": "LLMJOB_RUN_ID", "value": job.uid},
        # What the ConfigMap held when this pod was made: a changed configuration changes the
        # pod's own hash, so the operator sees a spec change of a running gang in one place.
        {"name": "LLMJOB_CONFIG_HASH", "value": config_hash},
        {"name": "LLMJOB_WORKER_INDEX", "value": str(index)},
        {"name": "LLMJOB_NUM_WORKERS", "value": str(spec.workers)},
        {"name": "LLMJOB_ATTEMPT", "value": str(attempt)},
        {"name": "LLMJOB_METRICS_PORT", "value": str(spec.metrics_port)},
        # Where the trainer leaves its exit report (the newest committed checkpoint's step):
        # the container's termination message, which outlives the pod's /metrics.
        {"name": "LLMJOB_TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
        _field_env("LLMJOB_POD_NAME", "metadata.name"),
        _field_env("LLMJOB_POD_NAMESPACE", "metadata.namespace"),
        _field_env("LLMJOB_POD_IP", "status.podIP"),
        # The root filesystem is read-only: every cache points at the writable emptyDir.
        {"name": "HOME", "value": f"{CACHE_DIR}/home"},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "TORCH_EXTENSIONS_DIR", "value": f"{CACHE_DIR}/torch_extensions"},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_DIR}/triton"},
        *spec.env,
    ]


def quantity(value: int | str) -> str:
    """Quantities as the API's canonical strings (`8`, `500m`, `64Gi`)."""
    return str(value)


def _resources(spec: LLMTrainingJobSpec) -> dict[str, Any]:
    resources = spec.resources
    requests = {name: quantity(value) for name, value in resources.requests.items()}
    limits = {name: quantity(value) for name, value in resources.limits.items()}
    # Extended resources (GPUs, RDMA devices) must have requests equal to limits.
    extended = dict(resources.extended)
    if spec.gpus_per_worker > 0:
        extended[resources.gpu_resource] = spec.gpus_per_worker
    for name, count in extended.items():
        requests[name] = limits[name] = quantity(count)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _volumes(job: JobRef, spec: LLMTrainingJobSpec) -> tuple[list[Any], list[Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "llmjob-config", "configMap": {"name": config_map_name(job.name)}},
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim_name(job, spec)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        *spec.volumes,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "llmjob-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "checkpoints", "mountPath": spec.checkpoint.mount_path},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
        *spec.volume_mounts,
    ]
    return volumes, mounts


def _container(
    job: JobRef,
    spec: LLMTrainingJobSpec,
    settings: RenderSettings,
    index: int,
    attempt: int,
    config_hash: str,
) -> dict[str, Any]:
    _, mounts = _volumes(job, spec)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.default_image,
        # `args` only: the image's ENTRYPOINT (`tini -- llmjob-launch` in ours) stays, so tini
        # is the container's first process and reaps the zombies DeepSpeed's launcher leaves.
        # An image of one's own must keep that entrypoint (FROM ours does).
        "args": launcher_args(job, spec, index),
        "env": worker_env(job, spec, index, attempt, config_hash),
        "ports": [
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
            {"name": "metrics", "containerPort": spec.metrics_port},
        ],
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": _capabilities(spec),
        },
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    if not spec.command:
        # The built-in trainer answers /healthz once its process group is up; a user's own
        # script makes no such promise, so it gets no probe.
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": spec.metrics_port},
            "periodSeconds": 5,
        }
    return container


def render_pod(
    job: JobRef,
    spec: LLMTrainingJobSpec,
    settings: RenderSettings,
    index: int,
    attempt: int,
    config_hash: str,
    inputs_hash: str,
) -> dict[str, Any]:
    volumes, _ = _volumes(job, spec)
    scheduling = spec.scheduling
    pod_spec: dict[str, Any] = {
        "hostname": worker_name(job.name, index),
        "subdomain": job.name,
        # The operator restarts the whole gang: a lone restarted rank cannot rejoin DeepSpeed.
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": spec.checkpoint.save_timeout_seconds
        + GRACE_MARGIN_SECONDS,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(job, spec, settings, index, attempt, config_hash)],
        "volumes": volumes,
    }
    if scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod_spec["tolerations"] = list(scheduling.tolerations)
    affinity = worker_affinity(job, spec, attempt)
    if affinity:
        pod_spec["affinity"] = affinity
    if scheduling.priority_class_name:
        pod_spec["priorityClassName"] = scheduling.priority_class_name
    scheduler_name = scheduling.scheduler_name or _gang_scheduler(spec)
    if scheduler_name:
        pod_spec["schedulerName"] = scheduler_name
    if scheduling.gang == "Native":
        pod_spec["schedulingGroup"] = {"podGroupName": pod_group_name(job, attempt)}
    pod_spec.update(_pod_identity(spec))
    kueue_labels, kueue_annotations = kueue_pod_metadata(job, spec, attempt)
    metadata = _metadata(
        job,
        worker_name(job.name, index),
        labels={WORKER_INDEX_LABEL: str(index), ATTEMPT_LABEL: str(attempt), **kueue_labels},
    )
    metadata["annotations"] = {
        **kueue_annotations,
        POD_INPUTS_HASH_ANNOTATION: inputs_hash,
    }
    metadata = _in_pod_group(metadata, job, spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _with_pod_metadata(metadata, spec),
        "spec": pod_spec,
    }


# -- What a GPU platform wires into the workers (spec.pod, scheduling.topology) -------------


def _with_pod_metadata(metadata: dict[str, Any], spec: LLMTrainingJobSpec) -> dict[str, Any]:
    """The user's labels and annotations under the operator's (the API refuses our keys; ours
    are applied last all the same)."""
    pod = spec.worker_pod
    return {
        **metadata,
        "labels": {**pod.labels, **metadata["labels"]},
        "annotations": {**pod.annotations, **metadata["annotations"]},
    }


def _pod_identity(spec: LLMTrainingJobSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pod = spec.worker_pod
    if pod.service_account_name:
        # automountServiceAccountToken stays false: workload identity (GKE, EKS, Azure) needs
        # the account, not the Kubernetes API token; its own webhook projects what it needs.
        out["serviceAccountName"] = pod.service_account_name
    if pod.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": s.name} for s in pod.image_pull_secrets]
    return out


def _capabilities(spec: LLMTrainingJobSpec) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if spec.worker_pod.add_capabilities:
        capabilities["add"] = list(spec.worker_pod.add_capabilities)
    return capabilities


def worker_affinity(job: JobRef, spec: LLMTrainingJobSpec, attempt: int) -> dict[str, Any]:
    """The user's affinity, with a podAffinity that keeps the attempt's workers in one domain of
    scheduling.topology.key unless the user gave a podAffinity of their own.

    Required by default: the scheduler lets the first worker go anywhere (no worker matches
    yet and it matches its own term) and puts the rest beside it, so a gang is never split
    across the slow link; it waits Pending when the domain is full. The term selects this
    attempt only: a terminating gang must not pin the next one to its domain."""
    affinity = dict(spec.scheduling.affinity)
    topology = spec.scheduling.topology
    if topology is None or "podAffinity" in affinity:
        return affinity
    term = {
        "labelSelector": {"matchLabels": {JOB_NAME_LABEL: job.name, ATTEMPT_LABEL: str(attempt)}},
        "topologyKey": topology.key,
    }
    if topology.mode == "Required":
        affinity["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    else:
        affinity["podAffinity"] = {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    return affinity


def render(
    job: JobRef, spec: LLMTrainingJobSpec, settings: RenderSettings, attempt: int
) -> DesiredObjects:
    """Everything the job should own during `attempt` (1-based)."""
    config_map = render_config_map(job, spec)
    config_hash = content_hash(config_map["data"])
    # One per gang: every worker is made from the same inputs.
    inputs_hash = pod_inputs_hash(job, spec)
    return DesiredObjects(
        service=render_service(job, spec),
        config_map=config_map,
        pods=[
            render_pod(job, spec, settings, i, attempt, config_hash, inputs_hash)
            for i in range(spec.workers)
        ],
        claim=render_claim(job, spec),
        pod_group=render_pod_group(job, spec, attempt),
    )


# -- Gang schedulers a platform runs (scheduling.gang) --------------------------------------
# Coscheduling and Volcano: one PodGroup per job, named after it: the operator never starts an
# attempt while the last one has live pods, so successive attempts fill the same group, and the
# name is known up front. Native: one PodGroup per attempt (pod_group_name), because a pod's
# spec.schedulingGroup is immutable and the group's gang policy cannot be unset or set later;
# each attempt's group is created once, when the attempt starts, and garbage-collected with the
# job (its ownerReference). The PodGroup protection finalizer keeps a group while pods use it.

COSCHEDULING_API_VERSION = "scheduling.x-k8s.io/v1alpha1"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
# The scheduler-plugins scheduler as its "second scheduler" install names it.
COSCHEDULING_SCHEDULER = "scheduler-plugins-scheduler"
VOLCANO_API_VERSION = "scheduling.volcano.sh/v1beta1"
VOLCANO_ANNOTATION = "scheduling.k8s.io/group-name"
VOLCANO_SCHEDULER = "volcano"
# The kube-scheduler's own (KEP-4671): beta in 1.37, behind the GenericWorkload feature gate.
NATIVE_API_VERSION = "scheduling.k8s.io/v1beta1"


def _gang_scheduler(spec: LLMTrainingJobSpec) -> str | None:
    gang = spec.scheduling.gang
    if gang == "Coscheduling":
        return COSCHEDULING_SCHEDULER
    if gang == "Volcano":
        return VOLCANO_SCHEDULER
    return None


def _in_pod_group(
    metadata: dict[str, Any], job: JobRef, spec: LLMTrainingJobSpec
) -> dict[str, Any]:
    gang = spec.scheduling.gang
    if gang == "Coscheduling":
        return {**metadata, "labels": {**metadata["labels"], COSCHEDULING_LABEL: job.name}}
    if gang == "Volcano":
        annotations = {**metadata.get("annotations", {}), VOLCANO_ANNOTATION: job.name}
        return {**metadata, "annotations": annotations}
    return metadata


def render_pod_group(job: JobRef, spec: LLMTrainingJobSpec, attempt: int) -> dict[str, Any] | None:
    """The gang's PodGroup: the scheduler binds none of its pods until minMember (all workers)
    fit at once, so two partial gangs never hold GPUs waiting for each other."""
    gang = spec.scheduling.gang
    if gang is None:
        return None
    if gang == "Native":
        return _native_pod_group(job, spec, attempt)
    group_spec: dict[str, Any] = {"minMember": spec.workers}
    if gang == "Coscheduling":
        api_version = COSCHEDULING_API_VERSION
    else:
        api_version = VOLCANO_API_VERSION
        if spec.scheduling.priority_class_name:
            group_spec["priorityClassName"] = spec.scheduling.priority_class_name
    return {
        "apiVersion": api_version,
        "kind": "PodGroup",
        "metadata": _metadata(job, job.name),
        "spec": group_spec,
    }


def _native_pod_group(job: JobRef, spec: LLMTrainingJobSpec, attempt: int) -> dict[str, Any]:
    """The attempt's scheduling.k8s.io PodGroup: minCount is the attempt's workers (a shrunk
    gang's spec has fewer), the workers' priority class its priority for group preemption."""
    group_spec: dict[str, Any] = {"schedulingPolicy": {"gang": {"minCount": spec.workers}}}
    if spec.scheduling.priority_class_name:
        group_spec["priorityClassName"] = spec.scheduling.priority_class_name
    return {
        "apiVersion": NATIVE_API_VERSION,
        "kind": "PodGroup",
        "metadata": _metadata(job, pod_group_name(job, attempt)),
        "spec": group_spec,
    }
