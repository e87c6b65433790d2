"""kube-apiserver's audit log of writes: who wrote what, in which namespace.

`apiserver_request_total` counts every request but has no user or namespace label, so on a
cluster where other tests (or Kueue, the pod GC, the namespace controller) write at the same
time, a count cannot say whose a write was. The audit log can: the API server records each
write as it answers it, with the user, the verb, the object and the response code.

Only writes are logged (reads and watches would make it the size of the request stream),
at Metadata level (no bodies), once per request (its ResponseComplete stage). Left out: the
heartbeats every node and every replica's Lease writes whatever else happens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import yaml

from llmjob_devcluster.layout import Layout

WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")

POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "None", "resources": [{"group": "", "resources": ["nodes/status"]}]},
        {"level": "Metadata", "verbs": list(WRITE_VERBS)},
        {"level": "None"},
    ],
}

# A long CI run writes tens of megabytes; one rotation keeps the disk bounded. A reader holding
# an offset across a rotation is told (AuditLogRotatedError) rather than handed wrong counts.
MAX_SIZE_MB = 200


def policy_path(layout: Layout) -> Path:
    return layout.state_dir / "audit-policy.yaml"


def log_path(layout: Layout) -> Path:
    return layout.log_dir / "audit.jsonl"


def write_policy(layout: Layout) -> None:
    path = policy_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(POLICY))


def apiserver_flags(layout: Layout) -> list[str]:
    return [
        f"--audit-policy-file={policy_path(layout)}",
        f"--audit-log-path={log_path(layout)}",
        "--audit-log-format=json",
        f"--audit-log-maxsize={MAX_SIZE_MB}",
        "--audit-log-maxbackup=1",
    ]


class Write(NamedTuple):
    verb: str  # the audit verb: create, update, patch, delete, deletecollection
    user: str
    namespace: str  # "" for cluster-scoped objects
    group: str  # "" for the core group
    resource: str
    subresource: str
    name: str
    code: int
    user_agent: str  # which process of that user: replicas sharing an account differ here
    received: float  # when the server received the request, seconds since the epoch


def parse_line(line: str) -> Write | None:
    """One audit event line as a Write; None for a line that is not a write's response."""
    event = json.loads(line)
    if event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITE_VERBS:
        return None
    ref = event.get("objectRef", {})
    return Write(
        verb=event["verb"],
        user=event.get("user", {}).get("username", ""),
        namespace=ref.get("namespace", ""),
        group=ref.get("apiGroup", ""),
        resource=ref.get("resource", ""),
        subresource=ref.get("subresource", ""),
        name=ref.get("name", ""),
        code=event.get("responseStatus", {}).get("code", 0),
        user_agent=event.get("userAgent", ""),
        received=datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp(),
    )


@dataclass(frozen=True)
class Mark:
    """A place in the audit log: what a later `writes_since` reads from."""

    path: Path
    offset: int


class AuditLogRotatedError(RuntimeError):
    pass


class NoAuditLogError(RuntimeError):
    pass


def mark(layout: Layout) -> Mark:
    path = log_path(layout)
    if not path.exists():
        # A cluster started before the audit flags: its writes would all read as none.
        raise NoAuditLogError(f"{path} missing: restart the local cluster's kube-apiserver")
    return Mark(path, path.stat().st_size)


def writes_since(start: Mark) -> list[Write]:
    """Every write the API server answered since `start` was taken. The server writes an event
    when it sends the response, so a caller that has its answer finds it here."""
    with start.path.open("rb") as log:
        log.seek(0, 2)
        if log.tell() < start.offset:
            raise AuditLogRotatedError(f"{start.path} rotated since the mark")
        log.seek(start.offset)
        text = log.read().decode()
    # A line being written as we read is left for the next reader: only whole lines count.
    whole = text[: text.rfind("\n") + 1]
    return [w for line in whole.splitlines() if line and (w := parse_line(line)) is not None]
