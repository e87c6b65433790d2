"""The sandbox of one pod: the first process in the pod's private mount and UTS
namespaces (started under `unshare --mount --uts --propagation private`), the
equivalent of a container runtime's pause container.

For a pod whose containers run from images (the default), it holds what the pod's
containers share: its hostname, its /dev/shm and its memory-backed emptyDirs, all in its
namespaces only; each container then builds its own root filesystem from its image inside
those namespaces (container_exec.py). For a pod of the host-environment image (an opt-in
of the fast integration tests), it builds the pod's root view itself: an overlay whose lower
layer is the host's / and whose upper layer is private to the pod; the pod's volumes
bind-mounted at their mountPaths; its own /etc/hosts and /dev/shm. Then it chroots into
that root and waits; containers are entered into its namespaces and root with nsenter, so
they share volumes the way containers of a pod do.

Standard library only: it runs as `python -I sandbox.py SETUP.json`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def inside(root: Path, path: str) -> Path:
    """`path` as seen from inside `root`: symlinks are followed within the root (Debian's
    /var/run -> /run must land in the pod's /run, not the host's)."""
    resolved = root
    pending = [part for part in path.split("/") if part]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            resolved = resolved.parent if resolved != root else root
            continue
        candidate = resolved / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks resolving {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = root
            pending = [p for p in target.split("/") if p and p != "."] + pending
            continue
        resolved = candidate
    return resolved


def bind(source: str, target: Path, read_only: bool) -> None:
    if Path(source).is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    mount("--bind", source, str(target))
    if read_only:
        mount("-o", "remount,bind,ro", str(target))


def build_root(setup: dict[str, Any]) -> Path:
    root = Path(setup["root"])
    for directory in (setup["upper"], setup["work"], setup["root"]):
        Path(directory).mkdir(parents=True, exist_ok=True)
    mount(
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir=/,upperdir={setup['upper']},workdir={setup['work']}",
        str(root),
    )
    for special in ("proc", "sys", "dev"):
        mount("--rbind", f"/{special}", str(root / special))
    # A pod's /dev/shm is its own, as in a container (DeepSpeed's shm ops use it).
    mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", str(root / "dev" / "shm"))
    for host_path in setup["hostBinds"]:
        bind(host_path, inside(root, host_path), read_only=False)
    # The checkout, at the fixed path where pods find the "image's" sources.
    bind(setup["imageSource"], inside(root, setup["imageTarget"]), read_only=True)
    for memory_dir in setup["memoryVolumes"]:
        # Mounted over the volume's host directory in this namespace only, so the data
        # lives in RAM and the host never sees it.
        mount("-t", "tmpfs", "-o", "mode=0777", "tmpfs", memory_dir)
        Path(memory_dir).chmod(setup["memoryVolumes"][memory_dir])
    for volume_mount in setup["mounts"]:
        bind(volume_mount["source"], inside(root, volume_mount["target"]), volume_mount["readOnly"])
    bind(setup["hostsFile"], root / "etc" / "hosts", read_only=True)
    bind(setup["hostnameFile"], root / "etc" / "hostname", read_only=True)
    return root


def share_memory(setup: dict[str, Any]) -> None:
    """The tmpfs mounts of a pod whose containers run from images: in these namespaces only,
    so the data lives in RAM and the host never sees it."""
    mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", setup["shm"])
    for memory_dir, mode in setup["memoryVolumes"].items():
        mount("-t", "tmpfs", "-o", "mode=0777", "tmpfs", memory_dir)
        Path(memory_dir).chmod(mode)


def main() -> None:
    setup = json.loads(Path(sys.argv[1]).read_text())
    socket.sethostname(setup["hostname"])
    if setup.get("images"):
        share_memory(setup)
        Path(setup["readyFile"]).write_text(str(os.getpid()))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    root = build_root(setup)
    # Opened before the chroot hides the host path; written after it, so that the agent
    # enters containers into the finished root.
    with open(setup["readyFile"], "w") as ready:
        os.chroot(root)
        os.chdir("/")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        ready.write(str(os.getpid()))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
