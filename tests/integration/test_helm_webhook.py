"""The chart's validating webhook: what it renders (Service client config by default, a URL
when set, failurePolicy, a helm-generated or cert-manager certificate, namespace scope), and,
installed on the local cluster, that `kubectl apply` is answered by the chart's operator pod
and that an upgrade keeps the certificate. On the local cluster the API server calls the pod at
127.0.0.1 (`webhook.url`, helm_chart.operator_values): no EndpointSlice takes a loopback pod
IP, so a Service has no endpoint there."""

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import wait_for
from tests.integration.helm_chart import CHART, Helm, installed, operator_values
from tests.integration.jobs import standin_job

pytestmark = pytest.mark.integration

DENIED = "denied the request"
CERT_DIR = "/etc/llmjob/webhook-tls"


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def webhook_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (configuration,) = of_kind(docs, "ValidatingWebhookConfiguration")
    (webhook,) = configuration["webhooks"]
    return dict(webhook)


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(docs, "Deployment")
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def openssl(*args: str, stdin: bytes = b"") -> str:
    return subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, check=True
    ).stdout.decode()


def test_default_webhook_is_a_service_with_a_generated_ca_and_fails_open(
    helm: Helm, tmp_path: Path
) -> None:
    docs = helm.template({}, namespace="llmjob-system")
    webhook = webhook_of(docs)
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["sideEffects"] == "None"
    assert webhook["rules"] == [
        {
            "apiGroups": ["training.llmjob.dev"],
            "apiVersions": ["*"],
            "resources": ["llmtrainingjobs"],
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]
    assert "namespaceSelector" not in webhook
    service_ref = webhook["clientConfig"]["service"]
    assert service_ref["path"] == "/validate-llmtrainingjob"
    (service,) = [
        s for s in of_kind(docs, "Service") if s["metadata"]["name"] == service_ref["name"]
    ]
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": service_ref["port"], "targetPort": "webhook", "protocol": "TCP"}
    ]
    # Not the operator's component label: the ServiceMonitor selects that one (metrics).
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook"
    (secret,) = of_kind(docs, "Secret")
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    for name in ("ca.crt", "tls.crt"):
        (tmp_path / name).write_bytes(base64.b64decode(secret["data"][name]))
    # The serving certificate is the Service's DNS name, signed by the CA in the caBundle.
    assert "OK" in openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt"))
    sans = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", str(tmp_path / "tls.crt"))
    assert f"DNS:{service_ref['name']}.llmjob-system.svc" in sans

    container = operator_container(docs)
    assert {f"--webhook-cert-dir={CERT_DIR}", "--webhook-port=9443"} <= set(container["args"])
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    assert {"name": "webhook-tls", "mountPath": CERT_DIR, "readOnly": True} in container[
        "volumeMounts"
    ]
    assert not {
        "--allow-host-path-volumes",
        "--allow-secret-passthrough",
        "--allow-ipc-lock",
    } & set(container["args"])


def test_a_url_replaces_the_service_and_the_certificate_names_its_host(
    helm: Helm, tmp_path: Path
) -> None:
    url = "https://127.0.0.1:31443/validate-llmtrainingjob"
    docs = helm.template({"webhook": {"url": url}})
    client_config = webhook_of(docs)["clientConfig"]
    assert client_config["url"] == url
    assert "service" not in client_config
    (secret,) = of_kind(docs, "Secret")
    (tmp_path / "tls.crt").write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    sans = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", str(tmp_path / "tls.crt"))
    assert "IP Address:127.0.0.1" in sans
    assert secret["metadata"]["annotations"]["llmjob.dev/webhook-hosts"].startswith("127.0.0.1,")


def test_namespaced_install_validates_only_its_namespaces(helm: Helm) -> None:
    webhook = webhook_of(helm.template({"watchNamespaces": ["team-a", "team-b"]}))
    assert webhook["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
        ]
    }


def test_cert_manager_issues_the_certificate_and_injects_the_ca(helm: Helm) -> None:
    docs = helm.template({"webhook": {"certManager": {"enabled": True}}}, namespace="ops")
    assert of_kind(docs, "Secret") == []
    (certificate,) = of_kind(docs, "Certificate")
    (issuer,) = of_kind(docs, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
    }
    (configuration,) = of_kind(docs, "ValidatingWebhookConfiguration")
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"ops/{certificate['metadata']['name']}"
    }
    assert "caBundle" not in configuration["webhooks"][0]["clientConfig"]
    (deployment,) = of_kind(docs, "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": certificate["spec"]["secretName"]}} in (
        volumes
    )

    own_issuer = {"name": "corp-ca", "kind": "ClusterIssuer"}
    docs = helm.template({"webhook": {"certManager": {"enabled": True, "issuerRef": own_issuer}}})
    assert of_kind(docs, "Issuer") == []
    assert of_kind(docs, "Certificate")[0]["spec"]["issuerRef"] == own_issuer


def test_disabled_webhook_and_policy_flags(helm: Helm) -> None:
    docs = helm.template(
        {
            "webhook": {"enabled": False},
            "specPolicy": {
                "allowHostPathVolumes": True,
                "allowSecretPassthrough": True,
                "allowIpcLock": True,
            },
        }
    )
    assert of_kind(docs, "ValidatingWebhookConfiguration") == []
    assert of_kind(docs, "Secret") == []
    args = operator_container(docs)["args"]
    assert not [a for a in args if a.startswith("--webhook")]
    assert {"--allow-host-path-volumes", "--allow-secret-passthrough", "--allow-ipc-lock"} <= set(
        args
    )


def apply(kubectl: list[str], namespace: str, body: dict[str, Any], *flags: str) -> Any:
    return subprocess.run(
        [*kubectl, "apply", "-n", namespace, *flags, "-f", "-"],
        input=yaml.safe_dump(body),
        capture_output=True,
        text=True,
        check=False,
    )


def test_installed_webhook_refuses_invalid_jobs_and_keeps_its_certificate_on_upgrade(
    helm: Helm,
    api_client: client.ApiClient,
    kubectl: list[str],
    restricted_namespaces: Any,
    crd_installed: None,
    venv_bin: str,
) -> None:
    release_ns = restricted_namespaces("llmjob-wh")
    job_ns = restricted_namespaces("team-wh")
    other_ns = restricted_namespaces("team-other")
    release = "wh"
    values = operator_values(watchNamespaces=[job_ns], rbac={"create": True, "userRoles": False})
    contradiction = standin_job("bad", venv_bin, deepspeed={"gradient_accumulation_steps": 8})
    hostile = standin_job("hostile", venv_bin, volumes=[{"name": "h", "hostPath": {"path": "/"}}])
    core = client.CoreV1Api(api_client)

    def refused(body: dict[str, Any], field: str) -> bool:
        result = apply(kubectl, job_ns, body, "--dry-run=server")
        return result.returncode != 0 and DENIED in result.stderr and field in result.stderr

    with installed(helm, release, release_ns, values):
        assert values["webhook"]["url"].startswith("https://127.0.0.1:")
        wait_for(
            lambda: refused(contradiction, "deepspeed.gradient_accumulation_steps"),
            timeout=60,
            what="the chart's webhook to refuse a contradiction",
        )
        result = apply(kubectl, job_ns, hostile)
        assert result.returncode != 0 and "volumes[0].hostPath" in result.stderr, result.stderr
        valid = apply(kubectl, job_ns, standin_job("fine", venv_bin, runPolicy={"suspend": True}))
        assert valid.returncode == 0, valid.stderr
        # A namespace this release does not reconcile is not its to validate.
        elsewhere = apply(kubectl, other_ns, contradiction, "--dry-run=server")
        assert elsewhere.returncode == 0, elsewhere.stderr

        secret_name = f"{release}-llmjob-operator-webhook-tls"
        before = core.read_namespaced_secret(secret_name, release_ns).data
        helm.run(
            "upgrade", release, str(CHART),
            "-n", release_ns, "-f", helm.values_file({**values, "logLevel": "DEBUG"}),
            "--wait", "--timeout=180s",
        )  # fmt: skip
        assert core.read_namespaced_secret(secret_name, release_ns).data == before
        configuration = client.AdmissionregistrationV1Api(
            api_client
        ).read_validating_webhook_configuration(
            f"{release}-llmjob-operator.{release_ns}.training.llmjob.dev"
        )
        ca_bundle = configuration.webhooks[0].client_config.ca_bundle
        if isinstance(ca_bundle, bytes):
            ca_bundle = base64.b64encode(ca_bundle).decode()
        assert ca_bundle == before["ca.crt"]
        wait_for(
            lambda: refused(hostile, "volumes[0].hostPath"),
            timeout=60,
            what="the upgraded operator's webhook",
        )
