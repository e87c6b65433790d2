"""The part of a node's kubelet HTTPS endpoint that `kubectl logs` reaches through the
API server: GET /containerLogs/<namespace>/<pod>/<container> (follow, tailLines,
previous). Only clients with a certificate from the cluster CA are served (the API
server presents its kubelet client certificate)."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmjob_devcluster.agent import NodeAgent
    from llmjob_devcluster.runtime import PodWorker


class KubeletServer:
    def __init__(self, agent: NodeAgent, node: str, address: str, port: int) -> None:
        self.agent = agent
        self.node = node
        handler = self._handler_class()
        self.server = ThreadingHTTPServer((address, port), handler)
        self.server.daemon_threads = True
        pki = agent.layout.pki_dir
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki / "serving.crt"), str(pki / "serving.key"))
        context.load_verify_locations(str(pki / "ca.crt"))
        context.verify_mode = ssl.CERT_REQUIRED
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name=f"kubelet-{node}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def find(self, namespace: str, pod: str) -> PodWorker | None:
        with self.agent.workers_lock:
            for worker in self.agent.workers.values():
                if (worker.node, worker.namespace, worker.pod_name) == (self.node, namespace, pod):
                    return worker
        return None

    def log_file(self, namespace: str, pod: str, container: str, previous: bool) -> Path | None:
        worker = self.find(namespace, pod)
        if worker is None:
            return None
        known = {c.name: c for c in worker.init_containers + worker.containers}
        if container not in known:
            return None
        restart = known[container].restart_count - (1 if previous else 0)
        path = worker.log_dir / container / f"{restart}.log"
        return path if restart >= 0 and path.exists() else None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                """Requests are not worth a log line each."""

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                parts = url.path.strip("/").split("/")
                if url.path == "/healthz":
                    self._reply(200, b"ok")
                    return
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._reply(404, b"not found")
                    return
                previous = query.get("previous", ["false"])[0] == "true"
                path = server.log_file(parts[1], parts[2], parts[3], previous)
                if path is None:
                    self._reply(404, f"no logs for {url.path}".encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                tail = query.get("tailLines")
                with open(path, "rb") as log:
                    lines = deque(log, maxlen=int(tail[0])) if tail else log.readlines()
                    self.wfile.write(b"".join(lines))
                    if query.get("follow", ["false"])[0] == "true":
                        self._follow(log, parts[1], parts[2], parts[3])

            def _follow(self, log: object, namespace: str, pod: str, container: str) -> None:
                assert hasattr(log, "read")
                while True:
                    chunk = log.read()
                    if chunk:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        continue
                    worker = server.find(namespace, pod)
                    running = worker is not None and any(
                        c.name == container and c.running
                        for c in worker.init_containers + worker.containers
                    )
                    if not running:
                        return
                    time.sleep(0.2)

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
