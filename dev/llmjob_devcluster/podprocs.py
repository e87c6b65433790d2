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
    """SIGKILLs every process in `namespace` until none is left (they may be forking).

    The namespace is held open meanwhile: once its last process is gone, the kernel hands its
    number to the next namespace made (the sandbox of a pod starting on the node at that
    moment, as when a queue admits the next gang as the last one ends), and killing by number
    would kill that pod. A namespace with no process left is not touched at all."""
    pin = _hold(namespace)
    if pin is None:
        return
    try:
        deadline = time.monotonic() + timeout
        while (pids := pids_in_mount_namespace(namespace)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
    finally:
        os.close(pin)


def _hold(namespace: str) -> int | None:
    """An open descriptor of `namespace` (it keeps the namespace, and its number, alive)."""
    for pid in pids_in_mount_namespace(namespace):
        try:
            descriptor = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
        except OSError:
            continue
        if f"mnt:[{os.fstat(descriptor).st_ino}]" == namespace:
            return descriptor
        os.close(descriptor)
    return None


def record_sandbox(pid_file: Path, pid: int) -> None:
    """Notes a pod's sandbox for kill_leftover_pods: its pid and, once it has entered it,
    its mount namespace, so that a stale file never leads to a reused pid."""
    namespace = mount_namespace(pid)
    own = mount_namespace(os.getpid())
    pid_file.write_text(f"{pid}\n{namespace if namespace != own else ''}\n")


def kill_leftover_pods(pods_dir: Path) -> None:
    """Kills the processes of every pod whose sandbox is still alive (after the node
    agent itself was killed, say), found through the sandbox pid files."""
    if not pods_dir.is_dir():
        return
    own = mount_namespace(os.getpid())
    for pid_file in pods_dir.glob(f"*/{SANDBOX_PID_FILE}"):
        with contextlib.suppress(ValueError, OSError):
            pid_text, recorded, *_ = [*pid_file.read_text().split("\n"), ""]
            pid = int(pid_text)
            namespace = mount_namespace(pid)
            is_sandbox = b"sandbox.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
            if (
                namespace is not None
                and namespace != own
                and is_sandbox
                and (not recorded or recorded == namespace)
            ):
                kill_mount_namespace(namespace)
        pid_file.unlink(missing_ok=True)
