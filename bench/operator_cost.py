"""What running jobs cost the API server (`make bench-operator`): for 1 and N running jobs
(stand-in workers), over one minute of steady state, the status PATCHes per job per minute and
all writes, from kube-apiserver's own `apiserver_request_total`, and the CPU seconds that
kube-apiserver and the operator spent, from /proc. Same machine, same run."""

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kubernetes import client, config
from tests import apiserver_requests
from tests.integration.jobs import Jobs, standin_job
from tests.integration.operator_process import OperatorProcess

from llmjob_devcluster import processes
from llmjob_devcluster.layout import Layout


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    api: client.ApiClient, operator: OperatorProcess, apiserver_pid: int, count: int, window: float
) -> None:
    namespace = f"cost-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        jobs = Jobs(api, namespace)
        venv_bin = str(Path(sys.executable).parent)
        names = [f"cost-{i}" for i in range(count)]
        for name in names:
            jobs.create(standin_job(name, venv_bin, standin={"steps": 100000}))
        for name in names:
            jobs.wait_phase(name, "Running", timeout=600)
        time.sleep(5)  # let start-up writes settle
        assert operator.process is not None
        before = apiserver_requests.snapshot(api)
        cpu_api, cpu_op = cpu_seconds(apiserver_pid), cpu_seconds(operator.process.pid)
        started = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - started
        delta = apiserver_requests.since(api, before)
        used_api = cpu_seconds(apiserver_pid) - cpu_api
        used_op = cpu_seconds(operator.process.pid) - cpu_op
    finally:
        core.delete_namespace(namespace)
    minutes = elapsed / 60
    patches = apiserver_requests.count(
        delta, verbs=apiserver_requests.WRITES, resource="llmtrainingjobs", subresource="status"
    )
    owned_writes = sum(
        apiserver_requests.count(delta, verbs=apiserver_requests.WRITES, resource=r, subresource="")
        for r in ("pods", "configmaps", "services", "persistentvolumeclaims")
    )
    print(
        f"{count:>4} running job(s): status PATCHes {patches / count / minutes:.1f} per job per "
        f"minute; other operator writes {owned_writes}; kube-apiserver CPU "
        f"{100 * used_api / elapsed:.1f}% of a core, operator CPU {100 * used_op / elapsed:.1f}%"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    layout = Layout.from_env()
    api = config.new_client_from_config(str(layout.kubeconfig))
    apiserver_pid = processes.running_pid(layout.pid_dir, "kube-apiserver")
    assert apiserver_pid is not None, "the local cluster is not running (make cluster)"
    operator = OperatorProcess(
        layout.kubeconfig, Path(tempfile.mkdtemp()) / "operator.log", progress_interval=10
    )
    operator.start()
    try:
        for count in (1, args.jobs):
            measure(api, operator, apiserver_pid, count, args.window)
    finally:
        operator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
