"""Operator settings, from flags with environment-variable defaults."""

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from llmjob_operator.api import PassthroughPolicy


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...]
    """Namespaces to watch; empty means the whole cluster."""
    default_image: str
    metrics_port: int
    health_port: int
    workers: int
    progress_interval_seconds: float
    log_level: str
    api_write_qps: float = 50.0
    """Client-side token bucket for every write. A gang's start or restart is about 12 writes
    per job: at 20/s the bucket, not the cluster, was the limit at 100 jobs. Peers' defaults
    are higher still: JobSet's manager 500 (burst 500), Kueue v0.19's 300 (burst 500); the
    kube-controller-manager's 20 (burst 30) is shared by all its controllers."""
    api_write_burst: int = 100
    api_timeout_seconds: float = 30.0
    """Time-out of every API request (a hung connection must not hold a worker)."""
    resync_seconds: float = 300.0
    """Period of the label-selected relist that drops what a watch gap hid."""
    progress_concurrency: int = 4
    progress_deadline_seconds: float = 5.0
    progress_max_bytes: int = 1 << 20
    passthrough: PassthroughPolicy = field(default_factory=PassthroughPolicy)
    """hostPath and Secret-backed volumes/env, IPC_LOCK in job specs: rejected unless allowed."""
    webhook_cert_dir: str | None = None
    """Directory with tls.crt and tls.key: serves the validating webhook; None serves none."""
    webhook_address: str = "0.0.0.0"
    webhook_port: int = 9443
    lease_name: str = "llmjob-operator"
    """The coordination.k8s.io/v1 Lease the replicas elect their leader on."""
    lease_namespace: str = "default"
    lease_duration_seconds: float = 15.0
    """client-go's defaults: a standby takes an unrenewed lease after 15 s; the leader stops
    acting 10 s after its last successful renew; every replica tries every 2 s."""
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0


def parse_settings(argv: list[str] | None = None) -> OperatorSettings:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="llmjob-operator", description="Runs the LLMTrainingJob operator."
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[n for n in env.get("LLMJOB_NAMESPACES", "").split(",") if n],
        help="namespace to watch (repeatable; env LLMJOB_NAMESPACES, comma-separated); "
        "default: all",
    )
    parser.add_argument(
        "--default-image",
        default=env.get("LLMJOB_DEFAULT_IMAGE", "ghcr.io/llmjob/trainer:0.1.0-cuda"),
        help="trainer image for jobs that name none",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=int(env.get("LLMJOB_METRICS_PORT", "8080"))
    )
    parser.add_argument(
        "--health-port", type=int, default=int(env.get("LLMJOB_HEALTH_PORT", "8081"))
    )
    parser.add_argument("--workers", type=int, default=int(env.get("LLMJOB_WORKERS", "4")))
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=float(env.get("LLMJOB_PROGRESS_INTERVAL", "10")),
        help="seconds between reads of rank 0's /metrics while a job runs",
    )
    parser.add_argument("--log-level", default=env.get("LLMJOB_LOG_LEVEL", "INFO"))

    def number(flag: str, variable: str, default: str, kind: type, help_text: str) -> None:
        parser.add_argument(
            flag, type=kind, default=kind(env.get(variable, default)), help=help_text
        )

    number("--api-write-qps", "LLMJOB_API_WRITE_QPS", "50", float, "writes per second, sustained")
    number("--api-write-burst", "LLMJOB_API_WRITE_BURST", "100", int, "writes in a burst")
    number(
        "--api-timeout", "LLMJOB_API_TIMEOUT", "30", float, "seconds before any API request fails"
    )
    number(
        "--resync-interval",
        "LLMJOB_RESYNC_INTERVAL",
        "300",
        float,
        "seconds between relists of jobs and owned objects (drops what a watch gap hid)",
    )
    number(
        "--progress-concurrency",
        "LLMJOB_PROGRESS_CONCURRENCY",
        "4",
        int,
        "reads of rank 0's /metrics at once",
    )
    number(
        "--progress-deadline",
        "LLMJOB_PROGRESS_DEADLINE",
        "5",
        float,
        "seconds one read of rank 0's /metrics may take in all",
    )
    number(
        "--progress-max-bytes",
        "LLMJOB_PROGRESS_MAX_BYTES",
        str(1 << 20),
        int,
        "largest /metrics body read",
    )
    _admission_arguments(parser, env)
    _election_arguments(parser, env)
    args = parser.parse_args(argv)
    return OperatorSettings(
        namespaces=tuple(args.namespace),
        default_image=args.default_image,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        workers=args.workers,
        progress_interval_seconds=args.progress_interval,
        log_level=args.log_level.upper(),
        api_write_qps=args.api_write_qps,
        api_write_burst=args.api_write_burst,
        api_timeout_seconds=args.api_timeout,
        resync_seconds=args.resync_interval,
        progress_concurrency=args.progress_concurrency,
        progress_deadline_seconds=args.progress_deadline,
        progress_max_bytes=args.progress_max_bytes,
        passthrough=PassthroughPolicy(
            allow_host_path=args.allow_host_path_volumes,
            allow_secrets=args.allow_secret_passthrough,
            allow_ipc_lock=args.allow_ipc_lock,
        ),
        webhook_cert_dir=args.webhook_cert_dir,
        webhook_address=args.webhook_address,
        webhook_port=args.webhook_port,
        lease_name=args.leader_election_lease_name,
        lease_namespace=args.leader_election_namespace,
        lease_duration_seconds=args.leader_election_lease_duration,
        renew_deadline_seconds=args.leader_election_renew_deadline,
        retry_period_seconds=args.leader_election_retry_period,
    )


# In a pod, the namespace of its service account (client-go's in-cluster default).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _election_arguments(parser: argparse.ArgumentParser, env: os._Environ[str]) -> None:
    own_namespace = (
        SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        if SERVICE_ACCOUNT_NAMESPACE.exists()
        else "default"
    )
    parser.add_argument(
        "--leader-election-lease-name",
        default=env.get("LLMJOB_LEADER_ELECTION_LEASE_NAME", "llmjob-operator"),
        help="name of the Lease the replicas elect their leader on",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=env.get("LLMJOB_LEADER_ELECTION_NAMESPACE", own_namespace),
        help="namespace of that Lease; default: the pod's own namespace (outside a pod: default)",
    )
    for flag, variable, default, help_text in (
        ("lease-duration", "LEASE_DURATION", "15", "seconds a standby waits on an unrenewed lease"),
        ("renew-deadline", "RENEW_DEADLINE", "10", "seconds the leader acts without a renew"),
        ("retry-period", "RETRY_PERIOD", "2", "seconds between tries to acquire or renew"),
    ):
        parser.add_argument(
            f"--leader-election-{flag}",
            type=float,
            default=float(env.get(f"LLMJOB_LEADER_ELECTION_{variable}", default)),
            help=help_text,
        )


def _admission_arguments(parser: argparse.ArgumentParser, env: os._Environ[str]) -> None:
    parser.add_argument(
        "--allow-host-path-volumes",
        action="store_true",
        default=env.get("LLMJOB_ALLOW_HOST_PATH_VOLUMES") == "true",
        help="accept hostPath volumes in job specs (default: rejected)",
    )
    parser.add_argument(
        "--allow-secret-passthrough",
        action="store_true",
        default=env.get("LLMJOB_ALLOW_SECRET_PASSTHROUGH") == "true",
        help="accept Secret-backed volumes and env (secretKeyRef) in job specs (default: rejected)",
    )
    parser.add_argument(
        "--allow-ipc-lock",
        action="store_true",
        default=env.get("LLMJOB_ALLOW_IPC_LOCK") == "true",
        help="accept pod.addCapabilities: [IPC_LOCK] (RDMA) in job specs; it is outside the Pod "
        "Security Standards' baseline (default: rejected)",
    )
    parser.add_argument(
        "--webhook-cert-dir",
        default=env.get("LLMJOB_WEBHOOK_CERT_DIR") or None,
        help="serve the validating admission webhook with tls.crt and tls.key from this "
        "directory (reloaded when they change); default: no webhook",
    )
    parser.add_argument("--webhook-address", default=env.get("LLMJOB_WEBHOOK_ADDRESS", "0.0.0.0"))
    parser.add_argument(
        "--webhook-port", type=int, default=int(env.get("LLMJOB_WEBHOOK_PORT", "9443"))
    )
