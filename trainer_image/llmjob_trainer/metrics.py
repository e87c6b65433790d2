"""Prometheus metrics of one trainer process, served on /metrics with /healthz beside it.

Names and units follow DESIGN §3. The HTTP server runs in a daemon thread, so it
answers while the training thread is inside a long step. MFU is only set on a GPU
whose peak is known: absent rather than invented.
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

PREFIX = "llmjob_trainer"


class TrainerMetrics:
    def __init__(self, job: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["job_name"]

        def gauge(name: str, help_text: str) -> Gauge:
            metric = Gauge(f"{PREFIX}_{name}", help_text, labels, registry=self.registry)
            return metric.labels(job)

        self.step = gauge("step", "Optimizer steps completed.")
        self.max_steps = gauge("max_steps", "Optimizer steps the run trains for.")
        self.loss = gauge("loss", "Training loss of the last step, averaged over ranks.")
        self.validation_loss = gauge("validation_loss", "Loss on the validation tokens.")
        self.learning_rate = gauge("learning_rate", "Learning rate of the last step.")
        self.grad_norm = gauge("grad_norm", "Global gradient norm of the last step.")
        self.tokens_per_second = gauge("tokens_per_second", "Tokens per second, all ranks.")
        self.step_duration_seconds = gauge("step_duration_seconds", "Last step's wall time.")
        self.mfu_ratio = Gauge(
            f"{PREFIX}_mfu_ratio",
            "Model FLOPs utilisation of the last step (0..1); only on a GPU of known peak.",
            labels,
            registry=self.registry,
        )
        self._job = job
        self.last_step_timestamp_seconds = gauge(
            "last_step_timestamp_seconds", "Unix time the last step finished."
        )
        self.checkpoint_duration_seconds = gauge(
            "checkpoint_duration_seconds", "Wall time of the last checkpoint commit."
        )
        self.checkpoint_size_bytes = gauge("checkpoint_size_bytes", "Size of the last checkpoint.")
        self.checkpoint_blocking_seconds = gauge(
            "checkpoint_blocking_seconds",
            "Of the last commit, the seconds the training loop waited (the rest overlapped).",
        )
        self.checkpoint_fallbacks = Counter(
            f"{PREFIX}_checkpoint_fallbacks",
            "Committed checkpoints that failed verification at resume (marked bad, skipped).",
            labels,
            registry=self.registry,
        ).labels(job)
        self.checkpoint_bad_step = gauge(
            "checkpoint_bad_step", "Step of the last checkpoint marked bad at resume."
        )
        self.resumed_step = gauge(
            "resumed_step", "Step of the checkpoint this attempt resumed from (0: none)."
        )
        self.last_checkpoint_step = gauge("last_checkpoint_step", "Step of the last commit.")
        self.last_checkpoint_timestamp_seconds = gauge(
            "last_checkpoint_timestamp_seconds", "Unix time of the last commit."
        )
        self.world_size = gauge("world_size", "Ranks in the run.")
        self.data_wait_seconds = gauge(
            "data_wait_seconds", "Time the last step waited for its batches (this rank)."
        )
        self.step_time_skew_seconds = gauge(
            "step_time_skew_seconds",
            "Slowest minus fastest rank's compute time of the last step (a straggler shows).",
        )
        self.slowest_rank = gauge("slowest_rank", "The rank with the longest last step.")
        self.host_memory_peak_bytes = gauge(
            "host_memory_peak_bytes", "Peak resident set size of this process."
        )
        self.device_memory_allocated_bytes = gauge(
            "device_memory_allocated_bytes", "GPU memory held by tensors now (this rank)."
        )
        self.device_memory_reserved_bytes = gauge(
            "device_memory_reserved_bytes", "GPU memory reserved by the caching allocator."
        )
        self.device_memory_peak_bytes = gauge(
            "device_memory_peak_bytes", "Peak GPU memory held by tensors since start."
        )
        self.loss_scale = gauge("loss_scale", "fp16 dynamic loss scale (only under fp16).")
        self.skipped_steps = gauge(
            "skipped_steps", "Optimizer steps skipped on fp16 overflow since the run began."
        )
        self.fabric = Gauge(
            f"{PREFIX}_fabric_info",
            "1, labelled with the collective backend and the transport it uses.",
            [*labels, "backend", "transport"],
            registry=self.registry,
        )
        self.allreduce_bus_bandwidth = gauge(
            "allreduce_bus_bandwidth_bytes_per_second",
            "All-reduce bus bandwidth measured at start-up (GPU only).",
        )
        self.attempt = gauge("attempt", "The operator's attempt number of this gang.")
        self.tokens = Counter(
            f"{PREFIX}_tokens",
            "Tokens trained on since the run began.",
            labels,
            registry=self.registry,
        ).labels(job)
        self._server: ThreadingHTTPServer | None = None

    def set_mfu(self, ratio: float) -> None:
        self.mfu_ratio.labels(self._job).set(ratio)

    def set_fabric(self, backend: str, transport: str) -> None:
        self.fabric.labels(self._job, backend, transport).set(1)

    def serve(self, address: str, port: int) -> None:
        """Serves /metrics and /healthz on `address:port` ("" = all) from a daemon thread."""
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    body, content_type = generate_latest(registry), CONTENT_TYPE_LATEST
                elif self.path == "/healthz":
                    body, content_type = b"ok\n", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Scrapes every few seconds would drown the training log."""

        self._server = ThreadingHTTPServer((address, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
