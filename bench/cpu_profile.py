"""Where a Python process's CPU goes over a stretch of a benchmark: py-spy samples it from
outside (no change to the process, no pause: `--nonblocking`), idle threads left out, and
the folded stacks it writes are summed up here per function.

Two views: inclusive (the share of busy samples a function is anywhere on the stack: what a
call costs with everything under it) and self (the share where it is the innermost frame:
where the time is actually spent).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType

# The venv's py-spy (make runs benchmarks with the venv's python, not its PATH).
PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
# py-spy's raw frames: "function (path/to/module.py:line)"; the line is dropped so that a
# function's samples add up.
FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


class CpuProfile:
    """py-spy recording `pid` from entry to exit; the folded stacks land in `output`."""

    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        self.pid, self.output, self.rate = pid, output, rate
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CpuProfile:
        command = [PY_SPY, "record", "--pid", str(self.pid), "--format", "raw"]
        command += ["--rate", str(self.rate), "--nonblocking", "--output", str(self.output)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self.process is not None
        # SIGINT ends the recording and writes the file (py-spy's Ctrl-C).
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def short(frame: str) -> str:
    """`function (package/module.py)`, with site-packages and the checkout stripped."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/operator/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['function']} ({path})"


def summarize(folded: str) -> tuple[int, Counter[str], Counter[str]]:
    """Samples in all, and per function its inclusive and its self sample counts."""
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # The first frame is the thread's name ("process 1:"/"thread (0x...)") in raw format.
        frames = [short(f) for f in stack.split(";") if FRAME.match(f)]
        if not frames:
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return total, inclusive, own


def report(path: Path, top: int = 15) -> str:
    total, inclusive, own = summarize(path.read_text())
    if not total:
        return f"  (no busy samples in {path})"
    lines = [f"  {total} busy samples ({path})", "  inclusive:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines.append("  self:")
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)
