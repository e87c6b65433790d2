"""`llmjob-launch`: the worker pod's entry point (the launch contract of DESIGN §3).

Reads the hostfile the operator mounts (default /etc/llmjob/hostfile, with train.json
and ds_config.json beside it), checks it with DeepSpeed's own parser and checks that
this pod's line is at its node rank, then runs the DeepSpeed launcher without ssh:

    deepspeed --hostfile H --no_ssh --node_rank I --master_addr <first host> ...
              --module llmjob_trainer.train --config train.json --deepspeed-config ds.json

After `--`, a user's own command runs in place of llmjob_trainer.train under the same
contract (hostfile, env, SIGTERM forwarding, exit codes).

Why it stays as a parent instead of exec'ing: DeepSpeed's per-node launcher answers
SIGTERM by terminating its ranks and exiting 1, and its runner drops exit codes of
signalled children. So the launcher runs in its own session, SIGTERM goes to the
training processes alone (they commit a checkpoint and exit 143, which the launcher
then passes on), and this process exits with the trainer's code.
"""

import argparse
import ipaddress
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from llmjob_trainer.errors import EXIT_INVALID_CONFIG, EXIT_STOPPED_BY_SIGTERM

log = logging.getLogger("llmjob.launch")

TRAINING_MODULE = "llmjob_trainer.train"
DEFAULT_HOSTFILE = "/etc/llmjob/hostfile"
# Collectives wait this long for a peer before failing (DeepSpeed's default is 10).
DEFAULT_TIMEOUT_MINUTES = "30"


class HostfileError(Exception):
    pass


def read_hostfile(path: Path) -> list[tuple[str, int]]:
    """Hosts and slots in file order, parsed by DeepSpeed's own hostfile parser."""
    from deepspeed.launcher.runner import fetch_hostfile

    if not path.is_file():
        raise HostfileError(f"hostfile {path} does not exist")
    try:
        pool = fetch_hostfile(str(path))
    except ValueError as err:
        raise HostfileError(f"hostfile {path}: {err}") from err
    return list(pool.items())


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def same_host(entry: str, identity: str) -> bool:
    """A hostfile entry names this pod: the same IP, or the same first DNS label
    (`job-worker-1.job.ns.svc` is pod `job-worker-1`)."""
    if is_ip_address(entry) or is_ip_address(identity):
        return entry == identity
    return entry.split(".", 1)[0] == identity.split(".", 1)[0]


def check_node_rank(hosts: list[tuple[str, int]], worker_index: int, identity: str) -> None:
    names = [host for host, _ in hosts]
    if not 0 <= worker_index < len(names):
        raise HostfileError(
            f"worker index {worker_index} is outside the hostfile's {len(names)} hosts"
        )
    positions = [i for i, host in enumerate(names) if same_host(host, identity)]
    if positions != [worker_index]:
        where = f"at lines {positions}" if positions else "nowhere"
        raise HostfileError(
            f"this pod ({identity}, worker index {worker_index}) appears {where} in the "
            f"hostfile {names}; it must appear once, at position {worker_index}"
        )


def writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def cache_environment(env: dict[str, str]) -> dict[str, str]:
    """Caches (DeepSpeed's JIT ops, Triton, Hugging Face) in a writable place: pods run
    as a non-root user whose home may be read-only; the operator mounts a cache dir."""
    home_cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(
        env.get("LLMJOB_CACHE_DIR") or (home_cache if writable(home_cache) else "/tmp/llmjob-cache")
    )
    defaults = {
        "TORCH_EXTENSIONS_DIR": str(root / "torch_extensions"),
        "TRITON_CACHE_DIR": str(root / "triton"),
        "HF_HOME": str(root / "huggingface"),
        "XDG_CACHE_HOME": str(root),
        "DEEPSPEED_TIMEOUT": DEFAULT_TIMEOUT_MINUTES,
        "PYTHONUNBUFFERED": "1",
    }
    return {**defaults, **env}


def core_binding(env: Mapping[str, str], cores: set[int]) -> list[str]:
    """DeepSpeed's per-rank core binding (numactl), when LLMJOB_BIND_CORES=1.

    Each rank gets its own slice of the cores this pod may use: DeepSpeed would
    otherwise slice every core of the host, including other pods' cpusets.
    """
    if env.get("LLMJOB_BIND_CORES") != "1":
        return []
    return ["--bind_cores_to_rank", "--bind_core_list", ",".join(map(str, sorted(cores)))]


def launcher_command(
    hostfile: Path,
    node_rank: int,
    master_addr: str,
    master_port: int,
    rank_command: list[str],
    binding: list[str] | None = None,
) -> list[str]:
    """DeepSpeed's runner; `rank_command` is `-m module args...` or a user's executable."""
    if rank_command[0] == "-m":
        program = ["--module", *rank_command[1:]]
    else:
        program = ["--no_python", *rank_command]
    return [
        sys.executable, "-u", "-m", "deepspeed.launcher.runner",
        "--hostfile", str(hostfile),
        "--no_ssh",
        "--node_rank", str(node_rank),
        "--master_addr", master_addr,
        "--master_port", str(master_port),
        "--no_local_rank",
        *(binding or []),
        *program,
    ]  # fmt: skip


def process_children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (pods run Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def rank_processes(root: int) -> list[int]:
    """The ranks below `root`: the children of DeepSpeed's per-node launcher."""
    children = process_children()
    frontier, ranks = [root], []
    while frontier:
        pid = frontier.pop()
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"-m", b"deepspeed.launcher.launch") in itertools.pairwise(argv):
            ranks.extend(children.get(pid, []))
        else:
            frontier.extend(children.get(pid, []))
    return ranks


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    user_command = argv[argv.index("--") + 1 :] if "--" in argv else []
    own_args = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="llmjob-launch", description=__doc__.split("\n")[0])
    env = os.environ
    parser.add_argument(
        "--hostfile", type=Path, default=env.get("LLMJOB_HOSTFILE", DEFAULT_HOSTFILE)
    )
    parser.add_argument(
        "--train-config", "--config", type=Path, help="train.json; default: beside the hostfile"
    )
    parser.add_argument("--deepspeed-config", type=Path, help="default: ds_config.json beside it")
    parser.add_argument(
        "--node-rank",
        type=int,
        default=int(env.get("LLMJOB_WORKER_INDEX", "0")),
        help="this pod's worker index; default $LLMJOB_WORKER_INDEX",
    )
    parser.add_argument(
        "--host",
        default=env.get("LLMJOB_POD_NAME") or socket.gethostname(),
        help="this pod's name in the hostfile; default $LLMJOB_POD_NAME, else the hostname",
    )
    parser.add_argument("--master-addr", help="rendezvous host; default: the hostfile's first")
    parser.add_argument(
        "--master-port", type=int, default=int(env.get("LLMJOB_MASTER_PORT", "29500"))
    )
    args = parser.parse_args(own_args)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
    )
    config = args.train_config or args.hostfile.with_name("train.json")
    ds_config = args.deepspeed_config or args.hostfile.with_name("ds_config.json")
    try:
        hosts = read_hostfile(args.hostfile)
        check_node_rank(hosts, args.node_rank, args.host)
    except HostfileError as err:
        print(f"llmjob-launch: invalid hostfile: {err}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    rank_command = user_command or ["-m", TRAINING_MODULE, "--config", str(config)]
    if not user_command and ds_config.is_file():
        rank_command += ["--deepspeed-config", str(ds_config)]
    master_addr = args.master_addr or hosts[0][0]
    binding = core_binding(env, os.sched_getaffinity(0))
    command = launcher_command(
        args.hostfile, args.node_rank, master_addr, args.master_port, rank_command, binding
    )
    log.info(
        "attempt %s, node rank %d of %d, master %s:%d",
        env.get("LLMJOB_ATTEMPT", "0"), args.node_rank, len(hosts), master_addr, args.master_port,
    )  # fmt: skip
    launcher = subprocess.Popen(command, env=cache_environment(dict(env)), start_new_session=True)
    stopped_before_training = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopped_before_training
        if launcher.poll() is not None:
            # Already exited and reaped: its pid (and group id) may belong to another process now.
            return
        ranks = rank_processes(launcher.pid)
        log.info("signal %d: asking ranks %s to commit and stop", signum, ranks)
        for pid in ranks:
            os.kill(pid, signal.SIGTERM)
        if not ranks:  # this attempt has not started training: there is nothing to commit
            stopped_before_training = True
            os.killpg(launcher.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = exit_code(launcher.wait())
    return EXIT_STOPPED_BY_SIGTERM if stopped_before_training else code


if __name__ == "__main__":
    sys.exit(main())
