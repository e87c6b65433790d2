"""kube-apiserver calls an admission webhook served on a loopback https URL
(`clientConfig.url: https://127.0.0.1:PORT/...` with a caBundle), as the operator's own
webhook is served on the local cluster."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from llmjob_devcluster import kube

pytestmark = pytest.mark.integration

DENIED_PREFIX = "denied-"


class Reviewer(http.server.BaseHTTPRequestHandler):
    """Denies ConfigMaps whose name starts with DENIED_PREFIX; allows everything else."""

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = review["request"]["object"]["metadata"]["name"]
        allowed = not name.startswith(DENIED_PREFIX)
        response = {"uid": review["request"]["uid"], "allowed": allowed}
        if not allowed:
            response["status"] = {"code": 403, "message": f"loopback webhook denies {name}"}
        body = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webhook_url(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A webhook server on 127.0.0.1 with a self-signed certificate: (url, its CA bundle)."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Reviewer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    yield f"https://127.0.0.1:{port}/validate", cert.read_bytes()
    server.shutdown()
    server.server_close()


def test_the_api_server_calls_a_webhook_on_a_loopback_url(
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    webhook_url: tuple[str, bytes],
) -> None:
    url, ca_bundle = webhook_url
    admission = client.AdmissionregistrationV1Api(api_client)
    name = f"loopback-{namespace}"
    admission.create_validating_webhook_configuration(
        kube.model(
            client.V1ValidatingWebhookConfiguration,
            {
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "loopback.test.llmjob.dev",
                        "clientConfig": {
                            "url": url,
                            "caBundle": base64.b64encode(ca_bundle).decode(),
                        },
                        "rules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["configmaps"],
                            }
                        ],
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": namespace}
                        },
                        "failurePolicy": "Fail",
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                        "timeoutSeconds": 5,
                    }
                ],
            },
        )
    )
    try:
        with pytest.raises(client.ApiException) as denied:
            core.create_namespaced_config_map(
                namespace, kube.model(client.V1ConfigMap, {"metadata": {"name": "denied-one"}})
            )
        assert denied.value.status == 403
        assert "loopback webhook denies denied-one" in str(denied.value.body)
        core.create_namespaced_config_map(
            namespace, kube.model(client.V1ConfigMap, {"metadata": {"name": "allowed-one"}})
        )
    finally:
        admission.delete_validating_webhook_configuration(name)
