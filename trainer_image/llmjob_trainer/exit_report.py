"""The trainer's exit report: what the operator must still learn from a worker after its
pods are gone, written where Kubernetes keeps it (the container's termination message).

/metrics dies with the pod, so a checkpoint committed on the way out (SIGTERM from a
preemption or a drain) would otherwise reach the job's status only when the next attempt
resumes from it. Each worker's local rank 0 rewrites the report after every commit; the
kubelet reads the file when the container ends, whatever the exit (a SIGKILL included), and
keeps it in the pod's `state.terminated.message`. The format is one JSON object (DESIGN §3
contract, kept to well under the kubelet's 4 KiB cap):

    {"lastCheckpointStep": 120, "committedAt": "2026-12-03T08:30:00Z"}

`committedAt` is left out when this attempt did not make the commit (the one it resumed from).
"""

import json
import os
from datetime import UTC, datetime
from pathlib import Path

# Set by the operator to the container's terminationMessagePath; unset (a run outside a
# pod, a bench) means nobody reads a report, and none is written.
PATH_ENV = "LLMJOB_TERMINATION_MESSAGE_PATH"


def report_path() -> Path | None:
    path = os.environ.get(PATH_ENV)
    return Path(path) if path else None


def write_exit_report(
    path: Path, last_checkpoint_step: int, committed_at: datetime | None = None
) -> None:
    """Rewritten in place: the kubelet bind-mounts the file, so it cannot be replaced by a
    rename; it reads it only once the container has exited, so no reader sees it torn."""
    report: dict[str, object] = {"lastCheckpointStep": last_checkpoint_step}
    if committed_at is not None:
        report["committedAt"] = committed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(json.dumps(report))
