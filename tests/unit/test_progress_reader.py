"""Reads of rank 0's /metrics that a tenant cannot abuse: real sockets on loopback, served
by hostile stand-ins (a trickle, a huge body, a redirect, a dead port)."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from llmjob_operator.progress import ProgressReader, Target, parse_metrics, read_metrics

METRICS = (
    b"llmjob_trainer_step 41\n"
    b"llmjob_trainer_loss 2.5\n"
    b"llmjob_trainer_last_step_timestamp_seconds 1780000000.5\n"
)


@contextmanager
def serving(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-thread-per-connection TCP server on 127.0.0.1 that answers with `answer`."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def loop() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(4096)
            with suppress(OSError):  # the reader hung up on a hostile answer
                answer(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()
        listener.close()


def ok(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(METRICS) + METRICS)


def trickle(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    for byte in METRICS * 100:
        conn.sendall(bytes([byte]))
        time.sleep(0.2)


def huge(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    chunk = b"# " + b"x" * 65533 + b"\n"
    for _ in range(16 * 1024):  # up to 1 GiB, if anyone kept reading
        conn.sendall(chunk)


def redirect(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\n\r\n")


def test_parse_reads_the_trainers_own_step_clock() -> None:
    progress = parse_metrics(METRICS.decode())
    assert progress.step == 41
    assert progress.last_step_time is not None
    assert progress.last_step_time.timestamp() == 1780000000.5


def test_parse_reads_checkpoint_fallbacks_as_the_trainer_exports_them() -> None:
    from prometheus_client import generate_latest

    from llmjob_trainer.metrics import TrainerMetrics

    exported = TrainerMetrics("j")
    clean = parse_metrics(generate_latest(exported.registry).decode())
    assert (clean.checkpoint_fallbacks, clean.resumed_step) == (0, 0)
    exported.checkpoint_fallbacks.inc()
    exported.checkpoint_bad_step.set(200)
    exported.resumed_step.set(100)
    seen = parse_metrics(generate_latest(exported.registry).decode())
    assert (seen.checkpoint_fallbacks, seen.checkpoint_bad_step, seen.resumed_step) == (
        1,
        200,
        100,
    )
    # Untyped, as the stand-in worker serves them.
    plain = parse_metrics(
        "llmjob_trainer_checkpoint_fallbacks_total 2\nllmjob_trainer_checkpoint_bad_step 150\n"
    )
    assert (plain.checkpoint_fallbacks, plain.checkpoint_bad_step, plain.resumed_step) == (
        2,
        150,
        None,
    )


def test_a_normal_read() -> None:
    with serving(ok) as port:
        seen = read_metrics("127.0.0.1", port, deadline_seconds=2, max_bytes=1 << 20)
    assert seen.error is None
    assert (seen.step, seen.loss) == (41, 2.5)
    assert seen.read_time is not None


def test_a_trickling_rank0_is_cut_off_at_the_total_deadline() -> None:
    with serving(trickle) as port:
        started = time.monotonic()
        seen = read_metrics("127.0.0.1", port, deadline_seconds=1.5, max_bytes=1 << 20)
        took = time.monotonic() - started
    assert seen.error is not None and "within 1.5s" in seen.error
    # Each byte arrives well inside any per-socket time-out; only a total deadline stops it.
    assert took < 1.5 + 1.0, took


def test_a_huge_body_is_cut_off_at_the_byte_cap() -> None:
    with serving(huge) as port:
        seen = read_metrics("127.0.0.1", port, deadline_seconds=10, max_bytes=1 << 20)
    assert seen.error is not None and "larger than 1048576 bytes" in seen.error


def test_a_redirect_is_not_followed() -> None:
    with serving(redirect) as port:
        seen = read_metrics("127.0.0.1", port, deadline_seconds=2, max_bytes=1 << 20)
    assert seen.error is not None and "HTTP 302" in seen.error


def test_a_refused_connection_is_an_error_not_an_exception() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seen = read_metrics("127.0.0.1", port, deadline_seconds=2, max_bytes=1 << 20)
    assert seen.error is not None and seen.step is None


def test_slow_tenants_cannot_hold_up_another_jobs_read() -> None:
    """Concurrency 2, two trickling jobs and one healthy one: the healthy job is read (and
    woken) within the deadline, and a trickling job is never read twice at once."""
    woken: list[tuple[str, str]] = []
    reader = ProgressReader(
        wake=woken.append,
        interval_seconds=0.2,
        concurrency=2,
        deadline_seconds=1.0,
        max_bytes=1 << 20,
    )
    thread = threading.Thread(target=reader.run, daemon=True)
    with serving(trickle) as slow, serving(ok) as fast:
        thread.start()
        reader.watch(("ns", "slow-a"), Target(1, "127.0.0.1", slow))
        reader.watch(("ns", "slow-b"), Target(1, "127.0.0.1", slow))
        reader.watch(("ns", "healthy"), Target(1, "127.0.0.1", fast))
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and reader.latest(("ns", "healthy"), 1) is None:
            time.sleep(0.05)
        healthy = reader.latest(("ns", "healthy"), 1)
        reader.stop()
    assert healthy is not None and healthy.step == 41
    assert ("ns", "healthy") in woken
    assert reader.latest(("ns", "healthy"), 2) is None  # another attempt's read is not this one's
