"""Which transport the collectives use, logged at start-up, so a fall-back to sockets shows.

NCCL says which network it chose only in its debug log: the trainer sends that log (INIT
and NET subsystems) to a per-process file unless the user set NCCL_DEBUG, and reads the
choice back after the first collective.
"""

import os
import re
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

_NETWORK = re.compile(r"NCCL INFO Using network (.+?)\s*$", re.MULTILINE)
_CHANNEL = re.compile(r"NCCL INFO Channel \S+ : \S+ -> \S+ via (\S+)")


def capture_nccl_choice() -> Path | None:
    """Before the process group starts: where NCCL will write its choice (None: not ours)."""
    if not torch.cuda.is_available() or "NCCL_DEBUG" in os.environ:
        return None
    directory = Path(tempfile.mkdtemp(prefix="llmjob-nccl-"))
    os.environ.update(
        NCCL_DEBUG="INFO",
        NCCL_DEBUG_SUBSYS="INIT,NET",
        NCCL_DEBUG_FILE=str(directory / "nccl.%p.log"),
    )
    return directory


def nccl_transport(log: str) -> str:
    """NCCL's inter-node network and intra-node paths, e.g. 'IB; intra-node P2P/CUMEM'."""
    networks = sorted(set(_NETWORK.findall(log)))
    local = sorted({path.split("/read")[0] for path in _CHANNEL.findall(log)})
    parts = [", ".join(networks) or "no network"]
    if local:
        parts.append("intra-node " + ", ".join(local))
    return "; ".join(parts)


def transport(capture: Path | None) -> tuple[str, str]:
    """(backend, transport) after the first collective."""
    backend = str(dist.get_backend())
    if backend != "nccl":
        return backend, "tcp" if backend == "gloo" else "unknown"
    if capture is None:
        return backend, "unknown (NCCL_DEBUG set by the user)"
    text = "".join(path.read_text(errors="replace") for path in capture.glob("nccl.*.log"))
    return backend, nccl_transport(text)


def allreduce_bus_bandwidth(device: torch.device, megabytes: int = 256, rounds: int = 5) -> float:
    """All-reduce bus bandwidth in bytes/s (nccl-tests' definition), GPU only."""
    tensor = torch.ones(megabytes * 2**20 // 2, dtype=torch.bfloat16, device=device)
    dist.all_reduce(tensor)  # warm-up: connections and buffers
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(rounds):
        dist.all_reduce(tensor)
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / rounds
    world = dist.get_world_size()
    return tensor.numel() * tensor.element_size() * 2 * (world - 1) / world / seconds
