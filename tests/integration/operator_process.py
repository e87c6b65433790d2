"""The operator as a user runs it (`llmjob-operator`), as a child process of the tests."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from llmjob_devcluster.images import HOST_ENVIRONMENT_IMAGE

REPO = Path(__file__).resolve().parents[2]
LEASE_NAMESPACE = "default"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class OperatorProcess:
    """Start, kill and restart the operator; its log goes to a file the tests can show."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        progress_interval: float = 2.0,
        extra_args: tuple[str, ...] = (),
        webhook_cert_dir: Path | None = None,
        lease_name: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        # Replicas of one operator share a Lease (LEASE_NAMESPACE/lease_name). Without one, each
        # start() elects itself on a fresh Lease: a test that kills and restarts its only
        # operator measures recovery, not the 15 s a new replica waits on a dead one's lease.
        self.lease_name = lease_name
        self.log_path = log_path
        self.progress_interval = progress_interval
        self.extra_args = extra_args
        self.metrics_port = free_port()
        self.health_port = free_port()
        # With a certificate directory (tls.crt, tls.key), it serves the admission webhook
        # on 127.0.0.1:webhook_port (tests.integration.webhook configures the API server).
        self.webhook_cert_dir = webhook_cert_dir
        self.webhook_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, wait: bool = True) -> None:
        lease = self.lease_name or f"llmjob-operator-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("operator", "trainer_image")),
        }
        command = [
            sys.executable,
            "-m",
            "llmjob_operator.main",
            f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}",
            f"--progress-interval={self.progress_interval}",
            # Stand-in workers run in the host environment: the fast tests' opt-in.
            f"--default-image={HOST_ENVIRONMENT_IMAGE}",
            f"--leader-election-namespace={LEASE_NAMESPACE}",
            f"--leader-election-lease-name={lease}",
            *self.extra_args,
        ]
        if self.webhook_cert_dir is not None:
            command += [
                f"--webhook-cert-dir={self.webhook_cert_dir}",
                "--webhook-address=127.0.0.1",
                f"--webhook-port={self.webhook_port}",
            ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.tail()
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"operator not serving metrics after {timeout}s\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: the crash a test wants, no clean-up of any kind."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (a long GC pause, a hung node), its clock runs on."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM, as the kubelet stops a pod; returns at once."""
        assert self.process is not None
        self.process.terminate()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_bytes(self) -> int:
        """The operator process's resident memory, as the kernel counts it."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) * 1024

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
