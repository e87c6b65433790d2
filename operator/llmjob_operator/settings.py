"""Operator settings, from flags with environment-variable defaults."""

import argparse
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...]
    """Namespaces to watch; empty means the whole cluster."""
    default_image: str
    metrics_port: int
    health_port: int
    peering: str | None
    """kopf peering name for several replicas; None runs standalone (one replica)."""
    workers: int
    progress_interval_seconds: float
    log_level: str


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
    parser.add_argument(
        "--peering",
        default=env.get("LLMJOB_PEERING") or None,
        help="kopf peering name (needs kopf's peering CRDs); default: standalone",
    )
    parser.add_argument("--workers", type=int, default=int(env.get("LLMJOB_WORKERS", "4")))
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=float(env.get("LLMJOB_PROGRESS_INTERVAL", "10")),
        help="seconds between reads of rank 0's /metrics while a job runs",
    )
    parser.add_argument("--log-level", default=env.get("LLMJOB_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    return OperatorSettings(
        namespaces=tuple(args.namespace),
        default_image=args.default_image,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        peering=args.peering,
        workers=args.workers,
        progress_interval_seconds=args.progress_interval,
        log_level=args.log_level.upper(),
    )
