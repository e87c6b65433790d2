"""The cached build of the scale cluster's programs, KWOK and JobSet (dev/build-scale.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from llmjob_devcluster.layout import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "dev" / "build-scale.sh"


def build() -> Path:
    """The build's directory (bin/kwok, bin/jobset, kwok-stages/, jobset-config/); builds it
    the first time."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def start_build(log: Path) -> subprocess.Popen[bytes]:
    """The same build, started in the background at the lowest priority (a test session's head
    start while its first tests run); a later build() waits on its lock."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            ["nice", "-n", "19", "bash", str(BUILD_SCRIPT)], stdout=out, stderr=subprocess.STDOUT
        )
