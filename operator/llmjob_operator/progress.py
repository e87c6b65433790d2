"""Reads every running job's training progress from its rank 0's /metrics, off the
reconcile workers, in a way a tenant cannot abuse (DESIGN §4):

- its own small thread pool (bounded concurrency), at most one read in flight per job;
- one total deadline per read, enforced by a watchdog that closes the socket, so a rank 0
  that trickles bytes cannot hold a thread past it (a per-socket time-out would not);
- a byte cap on the body, no redirects (http.client follows none);
- a read that fails says so (`TrainerProgress.error`): progress unknown, never a stall.

The controller names each job's target after a reconcile; a read whose result differs from
the last in anything the planner acts on wakes that job's reconcile.
"""

import contextlib
import dataclasses
import http.client
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from llmjob_operator.observe import TrainerProgress
from llmjob_operator.store import JobKey

log = logging.getLogger(__name__)

READS = Counter(
    "llmjob_operator_progress_reads_total",
    "Reads of rank 0's /metrics by outcome (ok, error).",
    ["outcome"],
)
READ_SECONDS = Histogram(
    "llmjob_operator_progress_read_duration_seconds", "Time one read of rank 0's /metrics took."
)


@dataclass(frozen=True)
class Target:
    """Where the current attempt's rank 0 serves /metrics."""

    attempt: int
    host: str
    port: int


def parse_metrics(text: str) -> TrainerProgress:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, sample.value)

    def number(name: str) -> float | None:
        return values.get(f"llmjob_trainer_{name}")

    def moment(name: str) -> datetime | None:
        value = number(name)
        return datetime.fromtimestamp(value, UTC) if value else None

    def whole(name: str) -> int | None:
        value = number(name)
        return int(value) if value is not None else None

    return TrainerProgress(
        step=whole("step"),
        loss=number("loss"),
        tokens_per_second=number("tokens_per_second"),
        last_checkpoint_step=whole("last_checkpoint_step"),
        last_checkpoint_time=moment("last_checkpoint_timestamp_seconds"),
        last_step_time=moment("last_step_timestamp_seconds"),
        # A counter: the exposition names its sample `_total`.
        checkpoint_fallbacks=whole("checkpoint_fallbacks_total") or 0,
        checkpoint_bad_step=whole("checkpoint_bad_step"),
        resumed_step=whole("resumed_step"),
    )


def read_metrics(
    host: str, port: int, deadline_seconds: float, max_bytes: int, path: str = "/metrics"
) -> TrainerProgress:
    """One bounded GET of rank 0's /metrics. Never raises."""
    url = f"http://{host}:{port}{path}"
    now = datetime.now(UTC)
    connection = http.client.HTTPConnection(host, port, timeout=deadline_seconds)
    expired = threading.Event()
    sockets: list[socket.socket] = []

    def expire() -> None:
        expired.set()
        # Shutting the socket down under a blocked recv() makes it return at once. The
        # socket is held here: http.client lets go of it once a response owns it.
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(deadline_seconds, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.connect()
        if connection.sock is not None:
            sockets.append(connection.sock)
        connection.request("GET", path, headers={"Accept": "text/plain"})
        response = connection.getresponse()
        if response.status != 200:
            return TrainerProgress(error=f"{url}: HTTP {response.status}", read_time=now)
        body = bytearray()
        while chunk := response.read1(64 * 1024):
            body += chunk
            if len(body) > max_bytes:
                return TrainerProgress(
                    error=f"{url}: body larger than {max_bytes} bytes", read_time=now
                )
        if expired.is_set():
            raise TimeoutError
        progress = parse_metrics(body.decode("utf-8", errors="replace"))
        return dataclasses.replace(progress, read_time=now)
    except (OSError, ValueError, http.client.HTTPException) as error:
        if expired.is_set():
            return TrainerProgress(
                error=f"{url}: no complete answer within {deadline_seconds:g}s", read_time=now
            )
        return TrainerProgress(error=f"{url}: {error}", read_time=now)
    finally:
        watchdog.cancel()
        connection.close()


def _acted_on(progress: TrainerProgress | None) -> tuple[object, ...] | None:
    """What the planner decides from: a change of any of these wakes the job."""
    if progress is None:
        return None
    return (
        progress.error is None,
        progress.step,
        round(progress.loss, 4) if progress.loss is not None else None,
        progress.last_checkpoint_step,
        progress.checkpoint_fallbacks,
        progress.checkpoint_bad_step,
    )


class ProgressReader:
    def __init__(
        self,
        wake: Callable[[JobKey], None],
        interval_seconds: float,
        concurrency: int,
        deadline_seconds: float,
        max_bytes: int,
    ) -> None:
        self._wake = wake
        self._interval = interval_seconds
        self._deadline = deadline_seconds
        self._max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="progress")
        self._lock = threading.Lock()
        self._targets: dict[JobKey, Target] = {}
        self._latest: dict[JobKey, tuple[Target, TrainerProgress]] = {}
        self._in_flight: set[JobKey] = set()
        self._stopped = threading.Event()

    def watch(self, key: JobKey, target: Target | None) -> None:
        """Read `target` every interval from now on; None stops reading the job."""
        with self._lock:
            if target is None:
                self._targets.pop(key, None)
                self._latest.pop(key, None)
                return
            new = self._targets.get(key) != target
            self._targets[key] = target
        if new:
            self._submit(key, target)

    def latest(self, key: JobKey, attempt: int) -> TrainerProgress | None:
        """The newest read of this attempt's rank 0, or None when there is none yet."""
        with self._lock:
            found = self._latest.get(key)
        if found is None or found[0].attempt != attempt:
            return None
        return found[1]

    def run(self) -> None:
        """Every interval, one read of each target that is not still being read."""
        while not self._stopped.wait(self._interval):
            with self._lock:
                targets = list(self._targets.items())
            for key, target in targets:
                self._submit(key, target)

    def stop(self) -> None:
        self._stopped.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, key: JobKey, target: Target) -> None:
        with self._lock:
            if key in self._in_flight:
                return
            self._in_flight.add(key)
        try:
            self._pool.submit(self._read, key, target)
        except RuntimeError:  # shut down
            with self._lock:
                self._in_flight.discard(key)

    def _read(self, key: JobKey, target: Target) -> None:
        try:
            with READ_SECONDS.time():
                seen = read_metrics(target.host, target.port, self._deadline, self._max_bytes)
            READS.labels("ok" if seen.error is None else "error").inc()
            with self._lock:
                if self._targets.get(key) != target:
                    return  # the job moved on while we read
                previous = self._latest.get(key)
                self._latest[key] = (target, seen)
            if (
                previous is None
                or previous[0] != target
                or (_acted_on(previous[1]) != _acted_on(seen))
            ):
                self._wake(key)
        except Exception:
            log.exception("progress read of %s/%s failed", *key)
        finally:
            with self._lock:
                self._in_flight.discard(key)
