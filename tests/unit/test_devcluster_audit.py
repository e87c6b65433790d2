"""The audit log reader: which lines are writes, and reading from a mark."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llmjob_devcluster import audit


def event(stage: str, verb: str, namespace: str = "team-a") -> str:
    return json.dumps(
        {
            "stage": stage,
            "verb": verb,
            "user": {"username": "system:serviceaccount:llmjob:operator"},
            "objectRef": {
                "resource": "llmtrainingjobs",
                "subresource": "status",
                "namespace": namespace,
                "name": "job-a",
                "apiGroup": "llmjob.dev",
            },
            "responseStatus": {"code": 200},
            "userAgent": "llmjob-operator (node-a_1f2e3d4c)",
            "requestReceivedTimestamp": "2026-12-04T01:02:03.250000Z",
        }
    )


def test_a_completed_write_reads_as_who_wrote_what_where() -> None:
    assert audit.parse_line(event("ResponseComplete", "patch")) == audit.Write(
        "patch",
        "system:serviceaccount:llmjob:operator",
        "team-a",
        "llmjob.dev",
        "llmtrainingjobs",
        "status",
        "job-a",
        200,
        "llmjob-operator (node-a_1f2e3d4c)",
        datetime(2026, 12, 4, 1, 2, 3, 250000, tzinfo=UTC).timestamp(),
    )


def test_reads_and_unfinished_requests_are_not_writes() -> None:
    assert audit.parse_line(event("ResponseComplete", "get")) is None
    assert audit.parse_line(event("ResponseStarted", "patch")) is None


def test_writes_since_a_mark_leave_out_earlier_lines_and_a_half_written_one(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text(event("ResponseComplete", "create", "before") + "\n")
    start = audit.Mark(log, log.stat().st_size)
    with log.open("a") as f:
        f.write(event("ResponseComplete", "patch", "after") + "\n")
        f.write(event("ResponseComplete", "delete", "after")[:40])
    assert [w.namespace for w in audit.writes_since(start)] == ["after"]


def test_a_rotated_log_is_an_error_not_zero_writes(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    with pytest.raises(audit.AuditLogRotatedError):
        audit.writes_since(audit.Mark(log, 10_000))
