"""The host processes of a pod on the node agent, found the way `ps` would: by reading
/proc. Pods are process trees on this machine, so a test can signal a rank directly."""

from pathlib import Path


def _environ(pid_dir: Path) -> dict[str, str]:
    try:
        raw = (pid_dir / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def _cmdline(pid_dir: Path) -> list[str]:
    try:
        return [
            part.decode(errors="replace")
            for part in (pid_dir / "cmdline").read_bytes().split(b"\0")
            if part
        ]
    except OSError:
        return []


def trainer_ranks(namespace: str, pod: str) -> list[int]:
    """PIDs of the training processes (`-m llmjob_trainer.train`) of one pod."""
    found = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        command = _cmdline(pid_dir)
        # The launchers name the module in their arguments too; a rank runs it with -m.
        if "-m" not in command or command[command.index("-m") + 1 : command.index("-m") + 2] != [
            "llmjob_trainer.train"
        ]:
            continue
        env = _environ(pid_dir)
        if env.get("LLMJOB_POD_NAMESPACE") == namespace and env.get("LLMJOB_POD_NAME") == pod:
            found.append(int(pid_dir.name))
    return found


def operator_processes(pod: str) -> list[int]:
    """PIDs of the `llmjob-operator` process of the operator pod (its HOSTNAME is the pod's)."""
    found = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        if not any(part.endswith("llmjob-operator") for part in _cmdline(pid_dir)):
            continue
        if _environ(pid_dir).get("HOSTNAME") == pod:
            found.append(int(pid_dir.name))
    return found
