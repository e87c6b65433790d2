"""The LLMTrainingJob API (training.llmjob.dev/v1alpha1): the single source of its schema.

`crd.py` generates the CustomResourceDefinition from these models, and the operator
validates every job with them. The model, data and training sections are the
trainer's own models, so both sides accept exactly the same thing.
CEL rules in `json_schema_extra` repeat a pydantic rule where the API server can
check it at admission; the pydantic validator stays the authority.
"""

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmjob_trainer.config import (
    ApiModel,
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    deepspeed_config,
)

GROUP = "training.llmjob.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LLMTrainingJob"
PLURAL = "llmtrainingjobs"

# The longest job name whose worker hostnames `<job>-worker-<index>` stay DNS labels (63).
MAX_JOB_NAME_LENGTH = 50
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
GPU_RESOURCE = "nvidia.com/gpu"
# Volume names and paths the operator mounts into every worker; user volumes must not clash.
RESERVED_VOLUME_NAMES = frozenset({"llmjob-config", "checkpoints", "dshm", "tmp", "cache"})
RESERVED_MOUNT_PATHS = frozenset({"/etc/llmjob", "/dev/shm", "/tmp", "/cache"})
# Environment the operator sets on every worker (render.worker_env): the launch contract.
OPERATOR_ENV = frozenset(
    {
        "LLMJOB_JOB_NAME",
        "LLMJOB_WORKER_INDEX",
        "LLMJOB_NUM_WORKERS",
        "LLMJOB_ATTEMPT",
        "LLMJOB_RUN_ID",
        "LLMJOB_CONFIG_HASH",
        "LLMJOB_METRICS_PORT",
        "LLMJOB_TERMINATION_MESSAGE_PATH",
        "LLMJOB_POD_NAME",
        "LLMJOB_POD_NAMESPACE",
        "LLMJOB_POD_IP",
    }
)

# A Kubernetes resource quantity: an integer, or a string such as "500m", "64Gi" or "1e3".
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
Quantity = int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]


# -- Kubernetes names, checked here so that a bad one is refused at admission naming the field
# instead of failing the pods' creation (k8s.io/apimachinery/pkg/util/validation).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
# Container resources that are not extended resources (core/v1 IsStandardContainerResourceName).
NATIVE_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})
HUGEPAGES_PREFIX = "hugepages-"


def dns_subdomain_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 subdomain (an object name, a key prefix), or None."""
    if len(value) > 253:
        return "at most 253 characters"
    if not _DNS_SUBDOMAIN.fullmatch(value):
        return "lowercase letters, digits, '-' and '.', starting and ending alphanumeric"
    return None


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a qualified name (`[prefix/]name`: label and annotation keys)."""
    parts = key.split("/")
    if len(parts) > 2:
        return "at most one '/' (prefix/name)"
    name = parts[-1]
    if len(parts) == 2:
        problem = dns_subdomain_problem(parts[0]) if parts[0] else "an empty prefix"
        if problem:
            return f"the prefix before '/' must be a DNS subdomain ({problem})"
    if not name or len(name) > 63 or not _NAME_PART.fullmatch(name):
        return (
            "the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending "
            "alphanumeric"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63 or (value and not _NAME_PART.fullmatch(value)):
        return (
            "a label value is empty or up to 63 letters, digits, '-', '_' or '.', starting and "
            "ending alphanumeric"
        )
    return None


def extended_resource_problem(name: str) -> str | None:
    """Why `name` cannot be an extended resource of a container (a device plugin's `domain/name`
    outside kubernetes.io, as core/v1 IsExtendedResourceName), or None."""
    if "/" not in name:
        return "an extended resource is domain/name, e.g. nvidia.com/gpu"
    if "kubernetes.io/" in name or name.startswith("requests."):
        return "kubernetes.io names are Kubernetes' own, not extended resources"
    problem = qualified_name_problem(name) or qualified_name_problem(f"requests.{name}")
    if problem:
        return problem
    return None


def _cel(*rules: tuple[str, str] | dict[str, str]) -> dict[str, Any]:
    return {
        "x-kubernetes-validations": [
            rule if isinstance(rule, dict) else {"rule": rule[0], "message": rule[1]}
            for rule in rules
        ]
    }


def _immutable(field: str, what: str) -> dict[str, str]:
    """A CEL transition rule: `field` may not be added, changed or removed by an update
    (`fieldPath` makes the API server name spec.checkpoint.<field> in its error)."""
    return {
        "rule": f"has(self.{field}) == has(oldSelf.{field}) "
        f"&& (!has(self.{field}) || self.{field} == oldSelf.{field})",
        "message": f"checkpoint.{field} is immutable: {what}",
        "fieldPath": f".{field}",
        "reason": "FieldValueForbidden",
    }


class PassthroughPolicy(BaseModel):
    """What the volumes and env passed through to workers may reference (operator settings).

    The operator, not the job's author, creates the worker pods: a hostPath volume would give a
    tenant the node's filesystem, and a Secret-backed volume or env var would hand workers a
    Secret the author may not be allowed to read. Both are rejected unless the operator allows
    them. Validation reads the policy from the pydantic context (`validate_job`); without one,
    the defaults (both rejected) apply.
    """

    model_config = ConfigDict(frozen=True)

    allow_host_path: bool = False
    allow_secrets: bool = False
    allow_ipc_lock: bool = False
    """Whether `pod.addCapabilities: [IPC_LOCK]` (RDMA) is accepted: it is outside the Pod
    Security Standards' baseline, so a platform opts in (and exempts the namespaces)."""


POLICY_CONTEXT_KEY = "passthroughPolicy"
# Keys of core/v1 volume sources that reference a Secret object: secret and projected
# sources[].secret mount one; the others (csi, flexVolume, cephfs, rbd, iscsi, azureFile,
# scaleIO, storageos) hand one to the volume plugin.
_SECRET_KEYS = frozenset(
    {"secret", "secretRef", "secretName", "nodePublishSecretRef", "controllerPublishSecretRef"}
)


def _secret_references(node: Any, path: str) -> list[str]:
    """Paths under `node` whose key names a Secret."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, child in node.items():
            child_path = f"{path}.{key}"
            if key in _SECRET_KEYS:
                found.append(child_path)
            else:
                found += _secret_references(child, child_path)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _secret_references(child, f"{path}[{index}]")
    return found


def passthrough_violations(
    volumes: list[dict[str, Any]], env: list[dict[str, Any]], policy: PassthroughPolicy
) -> list[str]:
    """What `policy` forbids in the volumes and env passed to workers, one message each."""
    problems: list[str] = []
    for index, volume in enumerate(volumes):
        if "hostPath" in volume and not policy.allow_host_path:
            problems.append(
                f"volumes[{index}].hostPath: hostPath volumes are not allowed (they expose the "
                "node's filesystem); the operator's --allow-host-path-volumes permits them"
            )
        if not policy.allow_secrets:
            problems += [
                f"{path}: volumes that reference a Secret are not allowed (the operator, not "
                "you, creates the pods); the operator's --allow-secret-passthrough permits them"
                for path in _secret_references(volume, f"volumes[{index}]")
            ]
    if not policy.allow_secrets:
        for index, variable in enumerate(env):
            value_from = variable.get("valueFrom")
            if isinstance(value_from, dict) and "secretKeyRef" in value_from:
                problems.append(
                    f"env[{index}].valueFrom.secretKeyRef: env from a Secret is not allowed (the "
                    "operator, not you, creates the pods); the operator's "
                    "--allow-secret-passthrough permits it"
                )
    return problems


def _policy(info: ValidationInfo) -> PassthroughPolicy:
    context = info.context
    if isinstance(context, dict) and isinstance(context.get(POLICY_CONTEXT_KEY), PassthroughPolicy):
        policy: PassthroughPolicy = context[POLICY_CONTEXT_KEY]
        return policy
    return PassthroughPolicy()


class ResourceSpec(ApiModel):
    """Resources of each worker: CPU and memory, which accelerator gpusPerWorker counts, and
    extra device-plugin resources such as RDMA."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Minimum resources, e.g. {cpu: 8, memory: 64Gi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Maximum resources, e.g. {memory: 128Gi}."
    )
    # No schema defaults here or in `pod`: a field the API server injects into every stored job
    # would make an operator one release older reject (and fail) every job during an upgrade.
    gpu_resource_name: str | None = Field(
        default=None,
        description="The extended resource gpusPerWorker requests (and limits): nvidia.com/gpu "
        "(if omitted), amd.com/gpu, or a MIG profile such as nvidia.com/mig-1g.10gb.",
    )
    extended: dict[str, int] = Field(
        default_factory=dict,
        description="Extra extended resources of each worker besides its GPUs, e.g. "
        "{rdma/ib: 1}: whole numbers, set as both request and limit (Kubernetes requires them "
        "equal).",
    )

    @property
    def gpu_resource(self) -> str:
        """What gpusPerWorker counts."""
        return self.gpu_resource_name or GPU_RESOURCE

    @model_validator(mode="after")
    def _resource_names(self) -> Self:
        gpu = self.gpu_resource
        problem = extended_resource_problem(gpu)
        if problem:
            raise ValueError(f"resources.gpuResourceName {gpu!r}: {problem}")
        for name, count in self.extended.items():
            problem = extended_resource_problem(name)
            if problem:
                raise ValueError(f"resources.extended[{name!r}]: {problem}")
            if count < 1:
                raise ValueError(f"resources.extended[{name!r}] must be at least 1 (got {count})")
            if name == gpu:
                raise ValueError(
                    f"resources.extended must not name {gpu}, the GPU resource; set "
                    "gpusPerWorker instead"
                )
        for section in ("requests", "limits"):
            for name in getattr(self, section):
                if name == gpu:
                    raise ValueError(
                        f"resources.{section} must not name {gpu}; set gpusPerWorker instead"
                    )
                if name in self.extended:
                    raise ValueError(
                        f"resources.{section}[{name!r}]: already in resources.extended (which "
                        "sets both request and limit); name it once"
                    )
                if name not in NATIVE_RESOURCES and not name.startswith(HUGEPAGES_PREFIX):
                    problem = extended_resource_problem(name)
                    if problem:
                        raise ValueError(
                            f"resources.{section}[{name!r}]: not cpu, memory, ephemeral-storage "
                            f"or hugepages-<size>, and not an extended resource: {problem}"
                        )
        self._extended_requests_equal_limits()
        return self

    def _extended_requests_equal_limits(self) -> None:
        for name, value in self.requests.items():
            if name in NATIVE_RESOURCES or name.startswith(HUGEPAGES_PREFIX):
                continue
            if str(self.limits.get(name)) != str(value):
                raise ValueError(
                    f"resources.requests[{name!r}]: an extended resource needs a limit equal to "
                    "its request; put it in resources.extended instead"
                )


class CheckpointSpec(ApiModel):
    """Where checkpoints are committed, how often, and how many are kept."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "has(self.claimName) != has(self.size)",
                "set exactly one of checkpoint.claimName (an existing PVC) and checkpoint.size "
                "(a PVC the operator creates)",
            ),
            # Where the committed checkpoints are: changing it would strand them (a running
            # gang keeps the old volume; the next attempt would resume from nothing).
            _immutable("claimName", "the job's checkpoints are on that claim"),
            _immutable("size", "the claim was created with it (resize the PVC itself)"),
            _immutable("storageClassName", "the claim was created with it"),
            _immutable("mountPath", "resuming workers look for checkpoints there"),
        )
    )

    claim_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="An existing PersistentVolumeClaim to hold checkpoints (ReadWriteMany when "
        "workers > 1). Exactly one of claimName and size.",
    )
    size: Quantity | None = Field(
        default=None,
        description="Size of a PersistentVolumeClaim `<job>-checkpoints` the operator creates. "
        "Exactly one of claimName and size.",
    )
    storage_class_name: str | None = Field(
        default=None,
        min_length=1,
        description="StorageClass of the created claim; the cluster's default class if omitted.",
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        default="ReadWriteMany",
        description="Access mode of the created claim; all workers write shards to it.",
    )
    reclaim_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="Retain keeps the created claim (and the checkpoints) when the job is "
        "deleted; Delete lets it be garbage-collected with the job.",
    )
    mount_path: str = Field(
        default="/checkpoints",
        pattern=r"^/.*",
        description="Where the claim is mounted in workers; checkpoints go to "
        "<mountPath>/<job name>.",
    )
    interval_steps: int = Field(default=100, ge=1, description="Commit every N steps.")
    keep_last: int = Field(default=3, ge=1, description="Committed checkpoints to keep (>= 1).")
    resume: Literal["Auto", "Never"] = Field(
        default="Auto",
        description="Auto resumes from the newest committed checkpoint; Never starts over.",
    )
    async_save: bool = Field(
        default=True,
        description="Write checkpoints in the background while training goes on; the commit "
        "(manifest, then latest) follows once every rank's files are durable, and SIGTERM "
        "still ends with a committed checkpoint. False blocks training for each write.",
    )
    save_timeout_seconds: int = Field(
        default=600,
        ge=30,
        le=86400,
        description="Time a worker gets after SIGTERM to finish its step and commit a "
        "checkpoint: the pods' terminationGracePeriodSeconds.",
    )

    @model_validator(mode="after")
    def _one_claim(self) -> Self:
        if (self.claim_name is None) == (self.size is None):
            raise ValueError(
                "set exactly one of checkpoint.claimName (an existing PVC) and "
                "checkpoint.size (a PVC the operator creates)"
            )
        if self.storage_class_name is not None and self.claim_name is not None:
            raise ValueError(
                "checkpoint.storageClassName applies only to a created claim (checkpoint.size); "
                "drop it or use size instead of claimName"
            )
        return self


class ExitCodeRule(ApiModel):
    """Matches a worker's container exit code."""

    operator: Literal["In", "NotIn"] = Field(description="In or NotIn the values.")
    values: list[int] = Field(
        min_length=1, max_length=255, description="Exit codes, 0 to 255, without repeats."
    )

    @field_validator("values")
    @classmethod
    def _exit_codes(cls, values: list[int]) -> list[int]:
        if any(v < 0 or v > 255 for v in values):
            raise ValueError("failurePolicy.rules[].onExitCodes.values must be within 0..255")
        if len(set(values)) != len(values):
            raise ValueError("failurePolicy.rules[].onExitCodes.values must not repeat a code")
        return values


FailureAction = Literal["FailJob", "RestartJob", "RestartJobNotCounted"]


class FailureRule(ApiModel):
    """One rule of the failure policy; the first matching rule decides."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "has(self.onExitCodes) != has(self.onPodConditions)",
                "set exactly one of onExitCodes and onPodConditions in a failure rule",
            ),
        )
    )

    action: FailureAction = Field(
        description="FailJob ends the job; RestartJob restarts the gang and counts against "
        "maxRestarts; RestartJobNotCounted restarts without counting (disruptions)."
    )
    on_exit_codes: ExitCodeRule | None = Field(
        default=None, description="Match the failed worker's exit code."
    )
    on_pod_conditions: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Match a pod condition type that is True on the failed worker, e.g. "
        "DisruptionTarget (preemption, eviction, node loss).",
    )

    @model_validator(mode="after")
    def _one_matcher(self) -> Self:
        if (self.on_exit_codes is None) == (self.on_pod_conditions is None):
            raise ValueError(
                "set exactly one of onExitCodes and onPodConditions in a failurePolicy rule"
            )
        return self


class NodeLossPolicy(ApiModel):
    """Continue on fewer workers when a restarted gang cannot be placed whole."""

    shrink_after_seconds: int = Field(
        ge=1,
        le=86400,
        description="How long a restarted gang (attempt 2 on) may wait with workers the scheduler "
        "cannot place (the capacity of a lost node has not come back) before the next attempt "
        "runs on the workers that were placed. Under scheduling.gang, which binds all "
        "workers or none, it runs on the next smaller size instead, one size per wait.",
    )
    min_workers: int = Field(
        ge=1,
        le=4096,
        description="Never shrink the gang below this many workers; with fewer placeable the "
        "job waits for capacity.",
    )


class FailurePolicy(ApiModel):
    """How failures, hangs and scheduling delays are handled."""

    max_restarts: int = Field(
        default=3, ge=0, le=1000, description="Counted gang restarts before the job fails."
    )
    backoff_seconds: int = Field(
        default=10, ge=0, le=3600, description="Wait before the first restart; doubles after."
    )
    max_backoff_seconds: int = Field(
        default=300, ge=0, le=86400, description="Upper bound of the restart backoff."
    )
    stall_timeout_seconds: int = Field(
        default=900,
        ge=0,
        description="Restart the gang (reason Stalled) when the training step does not advance "
        "for this long; 0 disables hang detection.",
    )
    scheduling_timeout_seconds: int = Field(
        default=0,
        ge=0,
        description="Report workers unschedulable for this long (condition and event); 0 waits "
        "forever without reporting.",
    )
    fail_on_scheduling_timeout: bool = Field(
        default=False,
        description="Fail the job (reason Unschedulable) when schedulingTimeoutSeconds passes.",
    )
    failure_settle_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="A failure that would end the job (maxRestarts used up) first waits this "
        "long for signs that the gang was disrupted instead (a peer's DisruptionTarget, its node "
        "NotReady or gone): when a node dies, the survivors fail before the cluster marks the "
        "lost pod. Restarts themselves never wait: a counted restart is given back when such "
        "signs come later. 0 ends the job at once.",
    )
    survivor_grace_period_seconds: int = Field(
        default=10,
        ge=0,
        le=3600,
        description="Grace period of the surviving workers of a gang that already broke (a "
        "worker exited, vanished or stalled). Without the lost rank they cannot commit a "
        "checkpoint, so they are stopped quickly to free their GPUs; suspend, spec changes and "
        "preemption keep checkpoint.saveTimeoutSeconds, since every rank is healthy then.",
    )
    on_node_loss: NodeLossPolicy | None = Field(
        default=None,
        description="Shrink a restarted gang the scheduler cannot place whole: it resumes from "
        "the newest commit (none yet: it waits) with the global batch kept, on a size whose "
        "ranks divide it. Each later attempt asks for spec.workers again (growing back); a "
        "running gang is never stopped to grow. Unset: a restarted gang waits for all workers.",
    )
    rules: list[FailureRule] = Field(
        default_factory=list,
        max_length=32,
        description="Ordered rules tried before the defaults (exit 2 and 3 fail the job, 143 and "
        "DisruptionTarget restart uncounted, anything else restarts counted).",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> Self:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise ValueError(
                f"failurePolicy.maxBackoffSeconds ({self.max_backoff_seconds}) must be at least "
                f"failurePolicy.backoffSeconds ({self.backoff_seconds})"
            )
        if self.fail_on_scheduling_timeout and self.scheduling_timeout_seconds == 0:
            raise ValueError(
                "failurePolicy.failOnSchedulingTimeout needs failurePolicy.schedulingTimeoutSeconds"
                " > 0"
            )
        return self


class RunPolicy(ApiModel):
    """Suspension, deadlines and clean-up."""

    suspend: bool = Field(
        default=False,
        description="True stops the workers (they checkpoint on SIGTERM); false resumes.",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail the job (DeadlineExceeded) after this much running time; time "
        "suspended or queued for a queue's admission (Kueue) does not count.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the job this long after it succeeds or fails."
    )
    clean_pod_policy: Literal["All", "Running", "None"] = Field(
        default="Running",
        description="Which worker pods are deleted when the job finishes: All, Running (still "
        "running ones) or None.",
    )


class TopologySpec(ApiModel):
    """One topology domain for the whole gang: every worker of an attempt on nodes that share
    the value of the node label `key`. DeepSpeed's collectives run at the speed of the slowest
    link, so a gang split across zones or racks trains slower (and pays cross-zone traffic)."""

    key: str = Field(
        description="Node label whose value names the domain, e.g. topology.kubernetes.io/zone "
        "or a rack label; nodes without it are not used."
    )
    mode: Literal["Required", "Preferred"] = Field(
        default="Required",
        description="Required (default): the scheduler places every worker in the domain of the "
        "first one placed, or leaves it Pending (see failurePolicy.schedulingTimeoutSeconds); a "
        "split gang is never started. Preferred: the same domain when there is room, split "
        "when there is not.",
    )

    @field_validator("key")
    @classmethod
    def _label_key(cls, key: str) -> str:
        problem = qualified_name_problem(key)
        if problem:
            raise ValueError(f"{key!r} is not a node label key: {problem}")
        return key


class SchedulingSpec(ApiModel):
    """Where the workers may run; passed to every worker pod."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            # The PodGroup of one scheduler is not moved to another's under a running gang.
            {
                "rule": "has(self.gang) == has(oldSelf.gang) "
                "&& (!has(self.gang) || self.gang == oldSelf.gang)",
                "message": "scheduling.gang is immutable: the job's pod group belongs to that "
                "scheduler",
                "fieldPath": ".gang",
                "reason": "FieldValueForbidden",
            },
        )
    )

    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Pod tolerations (core/v1 Toleration)."
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict, description="Pod affinity (core/v1 Affinity)."
    )
    priority_class_name: str | None = Field(
        default=None, min_length=1, description="PriorityClass of the workers."
    )
    scheduler_name: str | None = Field(
        default=None, min_length=1, description="Scheduler for the workers, e.g. a gang scheduler."
    )
    gang: Literal["Coscheduling", "Volcano", "Native"] | None = Field(
        default=None,
        description="Gang scheduling, every worker or none, by the scheduler a platform runs: "
        "Coscheduling, a scheduler-plugins PodGroup (scheduling.x-k8s.io/v1alpha1) named after "
        "the job and the workers' label scheduling.x-k8s.io/pod-group, for schedulerName "
        "(default scheduler-plugins-scheduler); Volcano, a Volcano PodGroup "
        "(scheduling.volcano.sh/v1beta1) and the annotation scheduling.k8s.io/group-name, for "
        "schedulerName volcano. minMember is workers. Native, the kube-scheduler's own gang "
        "scheduling (KEP-4671; Kubernetes 1.37 with the GenericWorkload feature gate and "
        "scheduling.k8s.io/v1beta1 served): a PodGroup (scheduling.k8s.io/v1beta1) per attempt, "
        "named <job>-<uid prefix>-<attempt>, with schedulingPolicy.gang.minCount the attempt's "
        "workers, and each worker's spec.schedulingGroup.podGroupName naming it; schedulerName "
        "stays the default unless set. Immutable.",
    )
    topology: TopologySpec | None = Field(
        default=None,
        description="Keep the gang in one topology domain (a zone, a rack): a podAffinity among "
        "the workers of an attempt. Not added when affinity.podAffinity is given (yours wins).",
    )


def _named(items: list[dict[str, Any]], field: str) -> list[str]:
    names: list[str] = []
    for index, item in enumerate(items):
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{field}[{index}].name is required")
        names.append(name)
    return names


# -- What a GPU platform wires into every worker pod (spec.pod) -----------------------------

# Label and annotation keys the operator sets on workers, or that would take the gang out of its
# hands: a worker labelled for a Kueue queue by hand would be queued as a lone pod, not a group.
OPERATOR_METADATA_DOMAIN = GROUP
RESERVED_POD_METADATA: dict[str, str] = {
    "app.kubernetes.io/name": "the operator sets it on every object it creates",
    "app.kubernetes.io/managed-by": "the operator sets it on every object it creates",
    "kueue.x-k8s.io/queue-name": "label the LLMTrainingJob itself to queue it",
    "kueue.x-k8s.io/pod-group-name": "the operator makes the gang one Kueue pod group",
    "kueue.x-k8s.io/pod-group-total-count": "the operator makes the gang one Kueue pod group",
    "scheduling.x-k8s.io/pod-group": "the operator names the gang's pod group",
    "scheduling.k8s.io/group-name": "the operator names the gang's pod group",
}
# The API server's limit on all annotations of an object together (TotalAnnotationSizeLimitB).
MAX_ANNOTATIONS_BYTES = 256 * 1024
# What a worker may add to its capabilities (it drops ALL): RDMA registers (pins) memory.
ADDABLE_CAPABILITIES = ("IPC_LOCK",)


def _reserved_key_problem(key: str) -> str | None:
    prefix, _, _ = key.rpartition("/")
    if prefix == OPERATOR_METADATA_DOMAIN or prefix.endswith(f".{OPERATOR_METADATA_DOMAIN}"):
        return f"{OPERATOR_METADATA_DOMAIN} keys are the operator's own"
    hint = RESERVED_POD_METADATA.get(key)
    return f"set by the operator ({hint})" if hint else None


class LocalObjectReference(ApiModel):
    """A reference to an object in the job's namespace (core/v1 LocalObjectReference)."""

    name: str = Field(min_length=1, description="Name of the object.")


class WorkerPodSpec(ApiModel):
    """What a platform wires into every worker pod: network attachments (Multus), workload
    identity for object storage, private registries, RDMA. The operator's own labels,
    annotations and security context stay as they are."""

    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels of every worker pod; keys under training.llmjob.dev and the "
        "ones the operator sets (app.kubernetes.io/name, managed-by, Kueue and pod-group keys) "
        "are refused.",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Extra annotations of every worker pod, e.g. "
        "{k8s.v1.cni.cncf.io/networks: rdma-net} for Multus; the operator's keys are refused.",
    )
    service_account_name: str | None = Field(
        default=None,
        description="ServiceAccount of the workers, e.g. one bound to a cloud identity for object "
        "storage (workload identity). The Kubernetes API token is still not mounted.",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=32,
        description="Secrets in the job's namespace for pulling the trainer image, [{name: x}].",
    )
    add_capabilities: list[str] = Field(
        default_factory=list,
        description="Linux capabilities added to the trainer container, which drops all others: "
        "only IPC_LOCK (RDMA memory registration), and only when the operator allows it "
        "(--allow-ipc-lock). The rest of the Pod Security Standards' baseline still applies; "
        "the namespace must admit IPC_LOCK (baseline does not).",
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            problem = qualified_name_problem(key) or _reserved_key_problem(key)
            if problem:
                raise ValueError(f"label {key!r}: {problem}")
            problem = label_value_problem(value)
            if problem:
                raise ValueError(f"label {key!r}: value {value!r}: {problem}")
        return labels

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            # The API server checks annotation keys lowercased.
            problem = qualified_name_problem(key.lower()) or _reserved_key_problem(key)
            if problem:
                raise ValueError(f"annotation {key!r}: {problem}")
        size = sum(len(key) + len(value) for key, value in annotations.items())
        if size > MAX_ANNOTATIONS_BYTES:
            raise ValueError(
                f"annotations total {size} bytes; the API server takes at most "
                f"{MAX_ANNOTATIONS_BYTES}"
            )
        return annotations

    @field_validator("service_account_name")
    @classmethod
    def _service_account(cls, name: str | None) -> str | None:
        problem = None if name is None else dns_subdomain_problem(name)
        if problem:
            raise ValueError(f"{name!r} is not a ServiceAccount name: {problem}")
        return name

    @field_validator("image_pull_secrets")
    @classmethod
    def _pull_secrets(cls, secrets: list[LocalObjectReference]) -> list[LocalObjectReference]:
        names = [secret.name for secret in secrets]
        for name in names:
            problem = dns_subdomain_problem(name)
            if problem:
                raise ValueError(f"{name!r} is not a Secret name: {problem}")
        if len(set(names)) != len(names):
            raise ValueError("names must be unique")
        return secrets

    @field_validator("add_capabilities")
    @classmethod
    def _capabilities(cls, capabilities: list[str], info: ValidationInfo) -> list[str]:
        for capability in capabilities:
            if capability not in ADDABLE_CAPABILITIES:
                raise ValueError(
                    f"{capability!r} may not be added: a worker may add only IPC_LOCK (RDMA "
                    "memory registration); it runs with every other capability dropped"
                )
        if len(set(capabilities)) != len(capabilities):
            raise ValueError("a capability is named twice")
        if capabilities and not _policy(info).allow_ipc_lock:
            raise ValueError(
                "IPC_LOCK is refused on this cluster: it is outside the Pod Security Standards' "
                "baseline; the operator's --allow-ipc-lock (chart: specPolicy.allowIpcLock) "
                "permits it"
            )
        return capabilities


class LLMTrainingJobSpec(ApiModel):
    """What to train and how to run it."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.gpusPerWorker == 0 || !has(self.procsPerWorker) "
                "|| self.procsPerWorker == self.gpusPerWorker",
                "procsPerWorker applies when gpusPerWorker is 0 (one process per GPU otherwise)",
            ),
            (
                "!has(self.failurePolicy) || !has(self.failurePolicy.onNodeLoss) "
                "|| self.failurePolicy.onNodeLoss.minWorkers <= self.workers",
                "failurePolicy.onNodeLoss.minWorkers must not exceed workers",
            ),
            (
                "!has(self.training) || !has(self.training.globalBatchSize) "
                "|| self.training.globalBatchSize == self.training.microBatchSize "
                "* self.training.gradientAccumulationSteps * self.workers "
                "* (self.gpusPerWorker > 0 ? self.gpusPerWorker "
                ": (has(self.procsPerWorker) ? self.procsPerWorker : 1))",
                "training.globalBatchSize must equal microBatchSize x gradientAccumulationSteps "
                "x workers x processes per worker",
            ),
        )
    )

    image: str | None = Field(
        default=None, min_length=1, description="Trainer image; the operator's default if omitted."
    )
    workers: int = Field(
        default=1, ge=1, le=4096, description="Worker pods (DeepSpeed nodes) in the gang."
    )
    gpus_per_worker: int = Field(
        default=1,
        ge=0,
        le=64,
        description="GPUs of each worker (resources.gpuResourceName, nvidia.com/gpu by "
        "default), requested and limited alike, and its hostfile slots; 0 runs on CPU.",
    )
    procs_per_worker: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Training processes per worker when gpusPerWorker is 0 (default 1).",
    )
    resources: ResourceSpec = Field(
        default_factory=ResourceSpec, description="CPU and memory of each worker."
    )
    model: ModelConfig = Field(description="The model to train.")
    data: DataConfig = Field(description="The tokenized data (see llmjob-prepare).")
    training: TrainConfig = Field(
        default_factory=TrainConfig, description="Optimisation: steps, batch, schedule, ZeRO."
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config merged over the generated one; a key that contradicts "
        "a value generated from training is rejected.",
    )
    checkpoint: CheckpointSpec = Field(description="Checkpoint storage and cadence.")
    failure_policy: FailurePolicy = Field(
        default_factory=FailurePolicy, description="Restarts, backoff, hang detection."
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Suspend, deadline, TTL, pod clean-up."
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Node selection and priority."
    )
    volumes: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra pod volumes (core/v1 Volume) for every worker."
    )
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra volume mounts (core/v1 VolumeMount)."
    )
    env: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra environment variables (core/v1 EnvVar)."
    )
    command: list[str] = Field(
        default_factory=list,
        description="Your own training script, run by the DeepSpeed launcher on every slot "
        "under the same contract (hostfile, env, exit codes) instead of the built-in trainer.",
    )
    args: list[str] = Field(default_factory=list, description="Arguments to command.")
    metrics_port: int = Field(
        default=9400, ge=1024, le=65535, description="Port of each worker's /metrics."
    )
    pod: WorkerPodSpec | None = Field(
        default=None,
        description="Labels, annotations, identity, pull secrets and capabilities of every "
        "worker pod.",
    )

    @property
    def slots_per_worker(self) -> int:
        """Training processes per worker: one per GPU, or procsPerWorker on CPU."""
        if self.gpus_per_worker > 0:
            return self.gpus_per_worker
        return self.procs_per_worker or 1

    @property
    def world_size(self) -> int:
        return self.workers * self.slots_per_worker

    @property
    def worker_pod(self) -> WorkerPodSpec:
        """spec.pod, or its defaults (nothing added) when omitted."""
        return self.pod or WorkerPodSpec()

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Self:
        if self.gpus_per_worker > 0 and self.procs_per_worker not in (None, self.gpus_per_worker):
            raise ValueError(
                f"procsPerWorker ({self.procs_per_worker}) applies only when gpusPerWorker is 0; "
                f"with {self.gpus_per_worker} GPUs each worker runs one process per GPU"
            )
        if self.args and not self.command:
            raise ValueError("args needs command (the script the arguments are for)")
        node_loss = self.failure_policy.on_node_loss
        if node_loss is not None and node_loss.min_workers > self.workers:
            raise ValueError(
                f"failurePolicy.onNodeLoss.minWorkers ({node_loss.min_workers}) must not exceed "
                f"workers ({self.workers})"
            )
        self.training.check_world_size(self.world_size)
        deepspeed_config(self.training, self.world_size, self.deepspeed)
        self._check_passthrough()
        problems = passthrough_violations(self.volumes, self.env, _policy(info))
        if problems:
            raise ValueError("; ".join(problems))
        self.run_config(job_name="validation")
        return self

    def _check_passthrough(self) -> None:
        volume_names = _named(self.volumes, "volumes")
        clash = RESERVED_VOLUME_NAMES.intersection(volume_names)
        if clash:
            raise ValueError(f"volumes: the name {sorted(clash)[0]!r} is reserved by the operator")
        if len(set(volume_names)) != len(volume_names):
            raise ValueError("volumes: names must be unique")
        known = set(volume_names)
        for index, mount in enumerate(self.volume_mounts):
            name = mount.get("name")
            if not isinstance(name, str) or name not in known:
                raise ValueError(f"volumeMounts[{index}].name {name!r} matches no entry in volumes")
            path = mount.get("mountPath")
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"volumeMounts[{index}].mountPath must be an absolute path")
            if path.rstrip("/") in RESERVED_MOUNT_PATHS | {self.checkpoint.mount_path}:
                raise ValueError(
                    f"volumeMounts[{index}].mountPath {path} is where the operator mounts its own "
                    "volume; pick another path"
                )
        for name in _named(self.env, "env"):
            if name in OPERATOR_ENV:
                raise ValueError(f"env: {name} is set by the operator (the launch contract)")

    def checkpoint_dir(self, job_name: str) -> str:
        return f"{self.checkpoint.mount_path.rstrip('/')}/{job_name}"

    def run_config(self, job_name: str) -> RunConfig:
        """The trainer's train.json for this job."""
        return RunConfig(
            job_name=job_name,
            model=self.model,
            data=self.data,
            training=self.training,
            checkpoint=CheckpointConfig(
                dir=self.checkpoint_dir(job_name),
                interval_steps=self.checkpoint.interval_steps,
                keep_last=self.checkpoint.keep_last,
                resume=self.checkpoint.resume,
                async_save=self.checkpoint.async_save,
            ),
            metrics_port=self.metrics_port,
        )


# Queued: the gang waits behind a scheduling gate (a queue's admission, e.g. Kueue's).
Phase = Literal["Pending", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
ConditionType = Literal[
    "Created", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed"
]


class Condition(ApiModel):
    """A metav1.Condition."""

    type: str = Field(
        description="Created, Queued, Running, Restarting, Suspended, Succeeded or Failed."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set from."
    )


class WorkerCounts(ApiModel):
    """Worker pods of the current attempt by state."""

    total: int = Field(default=0, description="Workers in the gang.")
    ready: int = Field(default=0, description="Workers whose pod is Ready.")
    running: int = Field(default=0, description="Workers whose pod is Running.")
    succeeded: int = Field(default=0, description="Workers that exited 0.")
    failed: int = Field(default=0, description="Workers that failed.")
    summary: str = Field(default="0/0", description="ready/total, for kubectl get.")


class FailureRecord(ApiModel):
    """The most recent worker failure."""

    reason: str = Field(description="CamelCase classification, e.g. Error, OOMKilled, Stalled.")
    message: str = Field(default="", description="Human-readable detail.")
    worker: int | None = Field(default=None, description="Index of the failed worker.")
    attempt: int | None = Field(default=None, description="The attempt that failed.")
    exit_code: int | None = Field(default=None, description="Container exit code, if any.")
    time: datetime = Field(description="When the failure was observed.")
    counted: bool | None = Field(
        default=None,
        description="Whether the restart it caused counts against maxRestarts; a counted "
        "restart becomes a disruption when the failed gang later shows one (node loss).",
    )


class Progress(ApiModel):
    """Training progress read from rank 0's /metrics."""

    step: int = Field(default=0, description="Optimizer steps completed.")
    max_steps: int = Field(default=0, description="training.maxSteps.")
    loss: float | None = Field(default=None, description="Training loss of the last step.")
    tokens_per_second: float | None = Field(default=None, description="Tokens per second.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds to finish.")
    updated_time: datetime | None = Field(default=None, description="When these were read.")
    last_advance_time: datetime | None = Field(
        default=None,
        description="When the last step finished, by the trainer's own clock (hang detection).",
    )


class CheckpointStatus(ApiModel):
    """The newest committed checkpoint."""

    step: int = Field(description="Step of the newest committed checkpoint.")
    tag: str | None = Field(default=None, description="Checkpoint tag (directory name).")
    time: datetime | None = Field(default=None, description="When it was committed.")


class LLMTrainingJobStatus(ApiModel):
    """Observed state, written by the operator; the durable record of attempts and restarts."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase | None = Field(default=None, description="Lifecycle phase.")
    conditions: list[Condition] = Field(default_factory=list, description="Current conditions.")
    observed_generation: int | None = Field(default=None, description="Last generation seen.")
    attempt: int = Field(default=0, description="Current attempt (gang generation), from 1.")
    restarts: int = Field(default=0, description="Restarts counted against maxRestarts.")
    disruptions: int = Field(default=0, description="Restarts not counted (disruptions).")
    workers: WorkerCounts = Field(default_factory=WorkerCounts, description="Worker counts.")
    start_time: datetime | None = Field(default=None, description="When the job first ran.")
    completion_time: datetime | None = Field(default=None, description="When it finished.")
    last_failure: FailureRecord | None = Field(default=None, description="Last failure.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    checkpoint: CheckpointStatus | None = Field(default=None, description="Newest checkpoint.")
    attempt_start_time: datetime | None = Field(
        default=None, description="When the current attempt's workers were created."
    )
    running_time: datetime | None = Field(
        default=None, description="When every worker of the current attempt was first Running."
    )
    restart_after: datetime | None = Field(
        default=None, description="Earliest time the next attempt starts (restart backoff)."
    )
    suspend_time: datetime | None = Field(
        default=None, description="When the current suspension began."
    )
    suspended_seconds: int = Field(
        default=0, description="Seconds spent suspended; not counted by activeDeadlineSeconds."
    )
    queued_seconds: int = Field(
        default=0,
        description="Seconds gangs waited for a queue's admission (condition Queued) before the "
        "current wait; not counted by activeDeadlineSeconds.",
    )
    gang_workers: int | None = Field(
        default=None,
        description="Workers of the current gang when failurePolicy.onNodeLoss shrank it below "
        "spec.workers; unset while the gang is spec.workers.",
    )


class LLMTrainingJob(ApiModel):
    """A DeepSpeed training run of a causal language model on a gang of worker pods."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=_cel(
            (
                f"size(self.metadata.name) <= {MAX_JOB_NAME_LENGTH}",
                f"metadata.name must be at most {MAX_JOB_NAME_LENGTH} characters so worker "
                "hostnames stay DNS labels",
            ),
            (
                f"self.metadata.name.matches('{JOB_NAME_PATTERN}')",
                "metadata.name must be a DNS-1035 label (start with a letter) for the Service",
            ),
        ),
    )

    api_version: Literal["training.llmjob.dev/v1alpha1"] = Field(
        default="training.llmjob.dev/v1alpha1", description="training.llmjob.dev/v1alpha1"
    )
    kind: Literal["LLMTrainingJob"] = Field(default="LLMTrainingJob", description="LLMTrainingJob")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: LLMTrainingJobSpec = Field(description="What to train and how to run it.")
    status: LLMTrainingJobStatus | None = Field(default=None, description="Observed state.")


def validate_job(body: dict[str, Any], policy: PassthroughPolicy) -> LLMTrainingJob:
    """The whole job under the operator's passthrough policy: what admission and the operator
    both decide with. Raises pydantic's ValidationError."""
    return LLMTrainingJob.model_validate(body, context={POLICY_CONTEXT_KEY: policy})


def explain_validation_error(error: ValidationError) -> str:
    """`spec.training.seqLen: ...` lines: the field first, then what is wrong with it."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
    )


def admission_verdict(
    body: dict[str, Any], old: dict[str, Any] | None, policy: PassthroughPolicy
) -> str | None:
    """Why the API server should refuse this write, or None to admit it.

    An update that leaves the spec alone (labels, annotations, finalizers, deletion) is always
    admitted: a job admitted under an older operator or policy must stay deletable and labelable.
    """
    if old is not None and old.get("spec") == body.get("spec"):
        return None
    try:
        validate_job(body, policy)
    except ValidationError as error:
        return explain_validation_error(error)
    return None
