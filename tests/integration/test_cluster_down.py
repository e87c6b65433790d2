"""`make cluster-down` leaves nothing of ours running. Checked on a second, throwaway
cluster (its own state directory, hence its own ports), so the session's cluster stays up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client

from llmjob_devcluster import kube, processes
from llmjob_devcluster.cluster import COMPONENTS
from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE
from llmjob_devcluster.layout import REPO_ROOT, Layout
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def throwaway_layout(tmp_path: Path, session: Layout) -> Layout:
    """A state directory whose derived ports differ from the session cluster's."""
    for attempt in range(100):
        state_dir = tmp_path / f"devcluster-{attempt}"
        os.environ["LLMJOB_DEVCLUSTER_DIR"] = str(state_dir)
        try:
            layout = Layout.from_env()
        finally:
            del os.environ["LLMJOB_DEVCLUSTER_DIR"]
        if layout.index != session.index:
            return layout
    raise AssertionError("no free cluster index")


def cluster_command(layout: Layout, command: str) -> None:
    env = {
        **os.environ,
        "LLMJOB_DEVCLUSTER_DIR": str(layout.state_dir),
        "LLMJOB_DEVCLUSTER_NODES": "1",
        "PYTHONPATH": str(REPO_ROOT / "dev"),
    }
    subprocess.run(
        [sys.executable, "-m", "llmjob_devcluster.cluster", command],
        env=env,
        check=True,
        timeout=300,
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_cluster_down_leaves_no_process_of_ours_running(tmp_path: Path, devcluster: Layout) -> None:
    layout = throwaway_layout(tmp_path, devcluster)
    pid_of_pod = tmp_path / "pid"
    cluster_command(layout, "up")
    try:
        core = client.CoreV1Api(kube.api_client(layout.kubeconfig))
        wait_for(lambda: _has_default_account(core), 30, "the default ServiceAccount")
        core.create_namespaced_pod(
            "default",
            kube.model(
                client.V1Pod,
                {
                    "metadata": {"name": "sleeper"},
                    "spec": {
                        "containers": [
                            {
                                "name": "main",
                                "image": HOST_ENVIRONMENT_IMAGE,
                                "command": ["sh", "-c", "echo $$$$ > /out/pid; exec sleep 3600"],
                                "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                            }
                        ],
                        "volumes": [{"name": "out", "hostPath": {"path": str(tmp_path)}}],
                    },
                },
            ),
        )
        wait_for(lambda: pid_of_pod.exists() and pid_of_pod.read_text().strip(), 60, "the pod")
        started = {name: processes.running_pid(layout.pid_dir, name) for name in COMPONENTS}
        assert all(started.values()), started
    finally:
        cluster_command(layout, "down")

    ours = [*started.values(), int(pid_of_pod.read_text())]
    assert [pid for pid in ours if pid is not None and alive(pid)] == []
    state_dir = str(layout.state_dir)
    mentions = [
        entry
        for entry in os.listdir("/proc")
        if entry.isdigit()
        and alive(int(entry))
        and state_dir in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
    ]
    assert mentions == []


def _has_default_account(core: client.CoreV1Api) -> bool:
    try:
        core.read_namespaced_service_account("default", "default")
    except client.ApiException:
        return False
    return True
