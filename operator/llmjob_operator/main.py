"""`llmjob-operator`: settings, logging, then kopf with our handlers."""

import logging
import sys

import kopf

from llmjob_operator import admission, handlers
from llmjob_operator.settings import parse_settings


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.log_level != "DEBUG":
        # kopf logs every handled watch event at INFO ("Handler 'pod_event' succeeded."):
        # over a hundred thousand lines in a 1,000-job bench round, each one CPU. Its warnings
        # and errors still show; --log-level=DEBUG shows every line.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    handlers.configure(settings)
    admission.configure(settings)
    kopf.run(
        # Replicas elect their leader on a Lease (leader.py). kopf's peering would freeze
        # equal-priority peers instead of electing one, and needs its own CRDs.
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
