"""The validating webhook for an operator run as a host process: a serving certificate for
127.0.0.1 (openssl, as the local cluster's own PKI) and a ValidatingWebhookConfiguration that
points the API server at `https://127.0.0.1:<port>/...` (the chart's default is a Service)."""

import base64
import subprocess
from pathlib import Path
from typing import Any

from llmjob_operator.admission import WEBHOOK_ID
from llmjob_operator.api import GROUP, PLURAL


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def serving_certificate(directory: Path) -> bytes:
    """tls.crt and tls.key for IP 127.0.0.1 in `directory`, signed by a fresh CA; returns the
    CA certificate (PEM), the caBundle the API server verifies the webhook with."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "tls.key", directory / "tls.csr", directory / "tls.crt"
    ext = directory / "tls.ext"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca_crt), "-subj", "/CN=llmjob-test-webhook-ca", "-days", "2")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=127.0.0.1")  # fmt: skip
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))  # fmt: skip
    return ca_crt.read_bytes()


def webhook_configuration(
    name: str, port: int, ca_bundle: bytes, namespaces: list[str], failure_policy: str = "Ignore"
) -> dict[str, Any]:
    """As the chart's, but with a URL client config, scoped to the test's namespaces.
    Ignore, as the chart's default: a webhook that does not answer cannot pass for one that
    rejects."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"validate.{PLURAL}.{GROUP}",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": failure_policy,
                "timeoutSeconds": 5,
                "matchPolicy": "Equivalent",
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["*"],
                        "resources": [PLURAL],
                        "operations": ["CREATE", "UPDATE"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "In",
                            "values": namespaces,
                        }
                    ]
                },
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/{WEBHOOK_ID}",
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                },
            }
        ],
    }
