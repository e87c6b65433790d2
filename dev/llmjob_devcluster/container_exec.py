"""Last step of starting a container, run inside the pod's namespaces (entered by nsenter):
for a container of an image, build its root filesystem (the image's unpacked layers under a
writable layer of the container's own, read-only when readOnlyRootFilesystem asks, with
/proc, /sys, /dev, the pod's /dev/shm, its volumes, /etc/hosts and /etc/hostname mounted in)
and chroot into it; then take the container's user, groups and working directory and exec
its command with PATH looked up in the container's environment, as a runtime does.

For the host-environment image the pod's root is the sandbox's, entered by nsenter --root.

Standard library only: it runs as `python -I container_exec.py SPEC_JSON`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# A script run with -I: its package is found through the directory above it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llmjob_devcluster.sandbox import inside, mount


def mountpoint(root: Path, path: str, is_dir: bool) -> Path:
    target = inside(root, path)
    if is_dir:
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    return target


def _under_dev(path: str) -> bool:
    return Path(path).is_relative_to("/dev")


def bind(source: str, target: Path, read_only: bool) -> None:
    """Onto a mount point made beforehand (the root may be read-only by now)."""
    mount("--bind", source, str(target))
    if read_only:
        mount("-o", "remount,bind,ro", str(target))


def build_root(spec: dict[str, Any]) -> Path:
    """The container's root filesystem. A restarted container gets a fresh writable layer,
    as a runtime creates a new container; its previous root is unmounted first."""
    rootfs = spec["rootfs"]
    root, upper, work = (Path(rootfs[key]) for key in ("root", "upper", "work"))
    if root.is_mount():
        subprocess.run(["umount", "--recursive", "--lazy", str(root)], check=True)
    for directory in (upper, work):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    root.mkdir(parents=True, exist_ok=True)
    lower = ":".join(rootfs["layers"])
    mount(
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={lower},upperdir={upper},workdir={work}",
        str(root),
    )
    # Mounts under /dev (the termination-message file) go onto the host's /dev, bound in
    # below: their mount points are made there, the mounts stay in the pod's namespace.
    mounts = [m for m in spec["mounts"] if not _under_dev(m["target"])]
    dev_mounts = [m for m in spec["mounts"] if _under_dev(m["target"])]
    # Mount points go into the writable layer before the root turns read-only.
    for special in ("proc", "sys", "dev"):
        mountpoint(root, f"/{special}", is_dir=True)
    for volume in mounts:
        mountpoint(root, volume["target"], Path(volume["source"]).is_dir())
    mountpoint(root, spec["workingDir"], is_dir=True)
    for etc_file in ("/etc/hosts", "/etc/hostname"):
        mountpoint(root, etc_file, is_dir=False)
    if rootfs["readOnly"]:
        mount("--bind", str(root), str(root))
        mount("-o", "remount,bind,ro", str(root))
    for special in ("proc", "sys", "dev"):
        mount("--rbind", f"/{special}", str(root / special))
    mount("--bind", spec["shm"], str(root / "dev" / "shm"))
    for volume in dev_mounts:
        target = mountpoint(root, volume["target"], Path(volume["source"]).is_dir())
        bind(volume["source"], target, volume["readOnly"])
    for volume in mounts:
        bind(volume["source"], inside(root, volume["target"]), volume["readOnly"])
    bind(spec["hostsFile"], inside(root, "/etc/hosts"), read_only=True)
    bind(spec["hostnameFile"], inside(root, "/etc/hostname"), read_only=True)
    return root


def passwd_entry(user: str) -> tuple[int, int, str] | None:
    """(uid, gid, home) of a user name or uid in the root's /etc/passwd, read as a file:
    the host's libc must not load the image's NSS modules."""
    try:
        lines = Path("/etc/passwd").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 6 and user in (fields[0], fields[2]):
            return int(fields[2]), int(fields[3]), fields[5]
    return None


def image_identity(spec: dict[str, Any]) -> tuple[int, int]:
    """The user as Kubernetes merges it: runAsUser/runAsGroup over the image's USER, whose
    primary group comes from the image's /etc/passwd."""
    user, _, group = str(spec.get("imageUser") or "0").partition(":")
    entry = passwd_entry(user)
    if spec["uid"] is not None:
        uid = int(spec["uid"])
        entry = passwd_entry(str(uid))
    elif entry is not None:
        uid = entry[0]
    elif user.isdigit():
        uid = int(user)
    else:
        raise SystemExit(f"llmjob node agent: unable to find user {user} in the image")
    if spec["gid"] is not None:
        gid = int(spec["gid"])
    elif group.isdigit():
        gid = int(group)
    else:
        gid = entry[1] if entry is not None else 0
    if "HOME" not in os.environ:
        os.environ["HOME"] = entry[2] if entry is not None else "/"
    return uid, gid


def main() -> None:
    spec = json.loads(sys.argv[1])
    if "rootfs" in spec:
        root = Path(spec["rootfs"]["root"]) if spec.get("join") else build_root(spec)
        os.chroot(root)
        os.chdir("/")
        uid, gid = image_identity(spec)
    else:
        uid, gid = spec["uid"], spec["gid"]
    working_dir = spec["workingDir"]
    os.makedirs(working_dir, exist_ok=True)
    os.setgroups(sorted({gid, *spec["groups"]}))
    os.setgid(gid)
    os.setuid(uid)
    os.chdir(working_dir)
    command = spec["command"]
    try:
        os.execvpe(command[0], command, os.environ)
    except OSError as error:
        print(f"llmjob node agent: cannot run {command[0]!r}: {error}", file=sys.stderr)
        sys.exit(127 if isinstance(error, FileNotFoundError) else 126)


if __name__ == "__main__":
    main()
