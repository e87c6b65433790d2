"""Starting and stopping the cluster's long-running processes, tracked by pid files.

A pid alone can be reused by an unrelated process after ours died, so each pid file
also names the executable path; a pid counts as ours only if /proc agrees."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path


def _pid_file(pid_dir: Path, name: str) -> Path:
    return pid_dir / f"{name}.pid"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def running_pid(pid_dir: Path, name: str) -> int | None:
    """The pid of process `name` if it is alive and still the process we started."""
    try:
        pid_text, marker = _pid_file(pid_dir, name).read_text().split("\n", 1)
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    cmdline = _cmdline(pid)
    if not cmdline or _is_zombie(pid) or marker.strip() not in " ".join(cmdline):
        return None
    return pid


def start(
    pid_dir: Path,
    log_dir: Path,
    name: str,
    argv: list[str],
    env: dict[str, str],
    marker: str | None = None,
) -> subprocess.Popen[bytes]:
    """Starts `argv` detached in its own session (so it outlives the caller and its whole
    process group can be signalled), logging to log_dir/name.log. `marker` (default argv[0])
    is what the process's command line must hold to count as ours: a wrapper that execs the
    program names the program."""
    pid_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _pid_file(pid_dir, name).write_text(f"{process.pid}\n{marker or argv[0]}\n")
    return process


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Waits until none of `pids` is alive; returns those still alive at the deadline."""
    remaining = set(pids)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        remaining = {
            pid for pid in remaining if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)
        }
        if remaining:
            time.sleep(0.1)
    return remaining


def signal_group(pid: int, signum: signal.Signals) -> None:
    """Signals the process group led by `pid` (every process we start leads its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def stop(pid_dir: Path, name: str, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; removes the pid file."""
    pid = running_pid(pid_dir, name)
    if pid is not None:
        signal_group(pid, signal.SIGTERM)
        if wait_gone([pid], grace):
            signal_group(pid, signal.SIGKILL)
            wait_gone([pid], 5)
    _pid_file(pid_dir, name).unlink(missing_ok=True)
