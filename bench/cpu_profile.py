"""Where a Python process's CPU goes over a stretch of a benchmark: py-spy samples it from
outside (no change to the process, no pause: `--nonblocking`), and the folded stacks it writes
are summed up here per function.

Only the thread holding the GIL is sampled (`--gil`): that is the interpreter's work. A thread
waiting (sleep, select, a socket read, a queue) has released the GIL and is left out, where
py-spy's own idle test counted such waits as busy. Work done in C without the GIL (TLS
decryption, zlib) is left out as well: it is the machine's, not this process's Python.

Three views: inclusive (the share of samples a function is anywhere on the stack: what a call
costs with everything under it), self (the share where it is the innermost frame: where the
time is spent), and for the top self functions, who asked for them: the nearest caller from
another package (deepcopy's caller, not deepcopy recursing).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
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
        command += ["--rate", str(self.rate), "--nonblocking", "--gil"]
        command += ["--output", str(self.output)]
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


def package(frame: str) -> str:
    """The top-level package (or module) a shortened frame is in: `kopf`, `json`, `copy.py`."""
    match = FRAME.match(frame)
    return match["file"].split("/", 1)[0] if match else frame


@dataclass
class Profile:
    total: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)
    callers: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    """Per innermost function, the nearest frame from another package on its stacks."""


def summarize(folded: str) -> Profile:
    """Samples in all, and per function its inclusive, self and callers' sample counts."""
    profile = Profile()
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # The first frame is the thread's name ("process 1:"/"thread (0x...)") in raw format.
        frames = [short(f) for f in stack.split(";") if FRAME.match(f)]
        if not frames:
            continue
        profile.total += count
        for frame in set(frames):
            profile.inclusive[frame] += count
        innermost = frames[-1]
        profile.own[innermost] += count
        home = package(innermost)
        caller = next((f for f in reversed(frames) if package(f) != home), "(root)")
        profile.callers[innermost][caller] += count
    return profile


def report(path: Path, top: int = 15, traced: int = 6) -> str:
    profile = summarize(path.read_text())
    total = profile.total
    if not total:
        return f"  (no samples holding the GIL in {path})"
    lines = [f"  {total} samples holding the GIL ({path})", "  inclusive:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in profile.inclusive.most_common(top)]
    lines.append("  self:")
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in profile.own.most_common(top)]
    lines.append("  the top self functions, by their nearest caller from another package:")
    for function, _ in profile.own.most_common(traced):
        lines.append(f"    {function}")
        callers = profile.callers[function].most_common(3)
        lines += [f"      {100 * n / total:5.1f}%  from {f}" for f, n in callers]
    return "\n".join(lines)
