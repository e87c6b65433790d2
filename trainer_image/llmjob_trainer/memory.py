"""Memory of this process: host peak RSS (Linux /proc) and the accelerator's allocator."""

from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in {_STATUS}")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Highest resident set size since the process began or the last reset_peak_rss()."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> int:
    """Starts the peak over from the current RSS (Linux clear_refs "5"); returns that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_bytes()


def device_memory_bytes() -> dict[str, int] | None:
    """allocated, reserved and peak allocated bytes on this rank's GPU; None without one."""
    if not torch.cuda.is_available():
        return None
    return {
        "allocated": torch.cuda.memory_allocated(),
        "reserved": torch.cuda.memory_reserved(),
        "peak": torch.cuda.max_memory_allocated(),
    }
