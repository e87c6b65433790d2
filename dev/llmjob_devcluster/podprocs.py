"""Finding and killing every process of a pod.

Each pod lives in its own mount namespace, held open by its sandbox process; every
container process is entered into that namespace. So "the processes of a pod" are
exactly the processes whose /proc/<pid>/ns/mnt equals the sandbox's, whatever they
forked or however they re-parented themselves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

SANDBOX_PID_FILE = "sandbox.pid"


def mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def pids_in_mount_namespace(namespace: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and mount_namespace(int(entry)) == namespace:
            pids.append(int(entry))
    return pids


def kill_mount_namespace(namespace: str, timeout: float = 5.0) -> None:
    """SIGKILLs every process in `namespace` until none is left (they may be forking)."""
    deadline = time.monotonic() + timeout
    while (pids := pids_in_mount_namespace(namespace)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def kill_leftover_pods(pods_dir: Path) -> None:
    """Kills the processes of every pod whose sandbox is still alive (after the node
    agent itself was killed, say), found through the sandbox pid files."""
    if not pods_dir.is_dir():
        return
    for pid_file in pods_dir.glob(f"*/{SANDBOX_PID_FILE}"):
        with contextlib.suppress(ValueError, OSError):
            namespace = mount_namespace(int(pid_file.read_text()))
            if namespace is not None and namespace != mount_namespace(os.getpid()):
                kill_mount_namespace(namespace)
        pid_file.unlink(missing_ok=True)
