"""The validating admission webhook: `kubectl apply` gets the pydantic API's verdict.

kopf serves it (`@kopf.on.validate`, an HTTPS server with the certificate in
`--webhook-cert-dir`, re-read when the files change, so cert-manager can rotate it); the
ValidatingWebhookConfiguration belongs to whoever installs the operator (the chart, or a test),
never to the operator, which then needs no cluster-wide write access. The operator still
validates every job it reconciles with the same function (InvalidSpec), so a job admitted while
the webhook was unreachable can never reach a pod.
"""

import logging
from pathlib import Path
from typing import Any

import kopf

from llmjob_operator.api import GROUP, PLURAL, VERSION, admission_verdict
from llmjob_operator.settings import OperatorSettings

# The URL path of the webhook: kopf routes `/<handler id>` to the handler.
WEBHOOK_ID = "validate-llmtrainingjob"
# 422 as the API server's own schema validation answers; kopf's default would be 500.
UNPROCESSABLE = 422


class _RejectionsAreNotErrors(logging.Filter):
    """kopf logs a refused write as its handler failing (ERROR), and aiohttp every call: a
    tenant's typo is not the operator's error, so those become INFO and the calls DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aiohttp.access":
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        elif f"'{WEBHOOK_ID}' failed permanently" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger().isEnabledFor(record.levelno)


def configure(operator: OperatorSettings) -> None:
    """Registers the webhook with kopf when the operator has a serving certificate.
    Called by main() before kopf starts."""
    if operator.webhook_cert_dir is None:
        return
    cert_dir = Path(operator.webhook_cert_dir)
    for name in ("kopf.objects", "aiohttp.access"):
        logging.getLogger(name).addFilter(_RejectionsAreNotErrors())

    def serve(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = kopf.WebhookServer(
            addr=operator.webhook_address,
            port=operator.webhook_port,
            certfile=str(cert_dir / "tls.crt"),
            pkeyfile=str(cert_dir / "tls.key"),
        )

    def validate(body: kopf.Body, **kwargs: Any) -> None:
        old: kopf.Body | None = kwargs.get("old")
        previous = dict(old) if old is not None else None
        verdict = admission_verdict(dict(body), previous, operator.passthrough)
        if verdict is not None:
            raise kopf.AdmissionError(verdict, code=UNPROCESSABLE)

    kopf.on.startup()(serve)
    kopf.on.validate(GROUP, VERSION, PLURAL, id=WEBHOOK_ID, operations=["CREATE", "UPDATE"])(
        validate
    )
