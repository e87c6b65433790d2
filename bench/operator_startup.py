"""Job startup and recovery seconds as the operator's own metrics report them, for 1 job and
for N jobs submitted at once, on the local cluster with stand-in workers (`make bench-operator`).

Each job's worker 1 fails once at step 1, so every job also measures a recovery.
"""

import argparse
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kubernetes import client, config
from tests.integration.jobs import Jobs, standin_job
from tests.integration.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[1]


def histogram(text: str, name: str) -> tuple[float, float, list[tuple[float, float]]]:
    """(count, sum, [(upper bound, cumulative count)]) of one histogram in exposition text."""
    count = float(re.search(rf"^{name}_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    total = float(re.search(rf"^{name}_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    buckets = [
        (float("inf") if le == "+Inf" else float(le), float(value))
        for le, value in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    ]
    return count, total, buckets


def quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float:
    """Upper bound of the bucket holding the q-quantile (what histogram_quantile rounds to)."""
    for bound, cumulative in buckets:
        if cumulative >= q * count:
            return bound
    return float("inf")


def run_round(api: client.ApiClient, operator: OperatorProcess, jobs_at_once: int) -> None:
    before = operator.metrics()
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        jobs = Jobs(api, namespace)
        venv_bin = str(Path(sys.executable).parent)
        names = [f"bench-{i}" for i in range(jobs_at_once)]
        for name in names:
            jobs.create(standin_job(name, venv_bin, standin={"steps": 3, "fail": "1:1:1:1"}))
        for name in names:
            jobs.wait_phase(name, "Succeeded", timeout=600)
        after = operator.metrics()
    finally:
        core.delete_namespace(namespace)
    print(f"\n{jobs_at_once} job(s) at once:")
    for metric in ("llmjob_operator_job_startup_seconds", "llmjob_operator_job_recovery_seconds"):
        count0, sum0, buckets0 = histogram(before, metric)
        count1, sum1, buckets1 = histogram(after, metric)
        count, total = count1 - count0, sum1 - sum0
        buckets = [(b, c1 - c0) for (b, c1), (_, c0) in zip(buckets1, buckets0, strict=True)]
        print(
            f"  {metric}: n={count:.0f} mean={total / count:.1f}s "
            f"p50<={quantile(buckets, count, 0.5)}s p95<={quantile(buckets, count, 0.95)}s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    kubeconfig = REPO / ".devcluster" / "kubeconfig"
    api = config.new_client_from_config(str(kubeconfig))
    operator = OperatorProcess(kubeconfig, Path(tempfile.mkdtemp()) / "operator.log")
    operator.start()
    try:
        started = time.monotonic()
        run_round(api, operator, 1)
        run_round(api, operator, args.jobs)
        print(f"\n(wall time {time.monotonic() - started:.0f}s)")
    finally:
        operator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
