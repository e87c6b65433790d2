"""The chart's monitoring with a real Prometheus (Debian's) scraping the local cluster: every
dashboard query returns data and every alert reaches its expected state for a failed, a
stalled and an operator-less run.

No prometheus-operator runs here, so the test does its job: it reads the ServiceMonitor,
PodMonitor and PrometheusRule the chart installed and turns them into Prometheus's own
scrape configs and rule file. Debian builds Prometheus without Kubernetes discovery, so
PodDiscovery below lists the pods and hands Prometheus file-based targets carrying the
same `__meta_kubernetes_pod_*` labels; the monitors' relabelings then run unchanged.
"""

import json
import math
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.integration.helm_chart import (
    Helm,
    install_monitoring_crds,
    installed,
    kubectl_json,
    operator_values,
)
from tests.integration.jobs import Jobs, standin_job
from tests.integration.prometheus import (
    PodDiscovery,
    Prometheus,
    install_prometheus,
    label_name,
)

pytestmark = pytest.mark.integration

SCRAPE_INTERVAL = "2s"
# Short windows so that each alert can reach its state within the test.
RULE_VALUES = {
    "enabled": True,
    "jobFailed": {"for": "0s", "severity": "warning"},
    "restartStorm": {"restarts": 2, "window": "5m", "severity": "warning"},
    "stalled": {"window": "20s", "severity": "critical"},
    "checkpointAge": {"intervalSeconds": 5, "intervals": 2, "severity": "warning"},
    "operatorDown": {"for": "0s", "severity": "critical"},
}


def snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def pod_selector_relabelings(selector: dict[str, Any]) -> list[dict[str, Any]]:
    keep: list[dict[str, Any]] = [
        {
            "source_labels": [f"__meta_kubernetes_pod_label_{label_name(key)}"],
            "regex": re.escape(value),
            "action": "keep",
        }
        for key, value in (selector.get("matchLabels") or {}).items()
    ]
    for expression in selector.get("matchExpressions") or []:
        assert expression["operator"] == "Exists", expression
        keep.append(
            {
                "source_labels": [
                    f"__meta_kubernetes_pod_labelpresent_{label_name(expression['key'])}"
                ],
                "regex": "true",
                "action": "keep",
            }
        )
    return keep


def scrape_config(
    job: str, selector: dict[str, Any], endpoint: dict[str, Any], job_label: str, targets: Path
) -> dict[str, Any]:
    """One monitor endpoint as prometheus-operator would configure it, on pod targets."""
    return {
        "job_name": job,
        "scrape_interval": endpoint["interval"],
        "scrape_timeout": endpoint["scrapeTimeout"],
        "metrics_path": endpoint.get("path", "/metrics"),
        "honor_labels": endpoint.get("honorLabels", False),
        "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "2s"}],
        "relabel_configs": [
            *pod_selector_relabelings(selector),
            {
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": re.escape(endpoint["port"]),
                "action": "keep",
            },
            # Finished pods are no targets (prometheus-operator drops them the same way).
            {
                "source_labels": ["__meta_kubernetes_pod_phase"],
                "regex": "(Failed|Succeeded)",
                "action": "drop",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": job_label},
            *[
                {snake(key): value for key, value in relabeling.items()}
                for relabeling in endpoint.get("relabelings") or []
            ],
        ],
    }


def prometheus_config(
    kubectl: list[str], namespace: str, discovery: PodDiscovery, workdir: Path
) -> dict[str, Any]:
    configs = []
    for monitor in kubectl_json(kubectl, "get", "servicemonitors", "-n", namespace)["items"]:
        # An EndpointSlice refuses the local cluster's loopback pod IPs, so the Services'
        # endpoints stay empty here: select the pods the monitored Service selects instead,
        # which is what its endpoints would list. `job` is the Service's name, as with
        # prometheus-operator.
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = kubectl_json(
            kubectl,
            "get",
            "services",
            "-n",
            namespace,
            "-l",
            ",".join(f"{k}={v}" for k, v in selector.items()),
        )["items"]
        assert len(services) == 1, services
        service = services[0]
        name = monitor["metadata"]["name"]
        for index, endpoint in enumerate(monitor["spec"]["endpoints"]):
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
            targets = discovery.add(
                workdir / f"service-{name}-{index}.json",
                monitor["spec"]["namespaceSelector"]["matchNames"],
            )
            configs.append(
                scrape_config(
                    f"serviceMonitor/{namespace}/{name}/{index}",
                    {"matchLabels": service["spec"]["selector"]},
                    endpoint,
                    service["metadata"]["name"],
                    targets,
                )
            )
    for monitor in kubectl_json(kubectl, "get", "podmonitors", "-n", namespace)["items"]:
        namespace_selector = monitor["spec"]["namespaceSelector"]
        names = None if namespace_selector.get("any") else namespace_selector["matchNames"]
        name = monitor["metadata"]["name"]
        for index, endpoint in enumerate(monitor["spec"]["podMetricsEndpoints"]):
            targets = discovery.add(workdir / f"pod-{name}-{index}.json", names)
            configs.append(
                scrape_config(
                    f"podMonitor/{namespace}/{name}/{index}",
                    monitor["spec"]["selector"],
                    endpoint,
                    f"{namespace}/{name}",
                    targets,
                )
            )
    assert len(configs) == 2, configs
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "2s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": configs,
    }


@pytest.fixture(scope="module")
def prometheus_binary() -> None:
    install_prometheus()


@pytest.fixture
def discovery(api_client: client.ApiClient) -> Iterator[PodDiscovery]:
    pods = PodDiscovery(api_client)
    yield pods
    pods.stop()


@pytest.fixture
def prometheus(prometheus_binary: None, tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path)
    yield server
    server.stop()


def dashboard_queries(configmap: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(every panel target's expr, every variable's query) of the chart's dashboard."""
    (document,) = configmap["data"].values()
    dashboard = json.loads(document)
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    variables = [
        v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    return exprs, variables


def test_dashboard_queries_return_data_and_alerts_fire_as_expected(
    helm: Helm,
    api_client: client.ApiClient,
    kubectl: list[str],
    restricted_namespaces: Callable[[str], str],
    crd_installed: None,
    prometheus: Prometheus,
    discovery: PodDiscovery,
    venv_bin: str,
) -> None:
    install_monitoring_crds(kubectl)
    release_ns = restricted_namespaces("llmjob-mon")
    job_ns = restricted_namespaces("team-mon")
    release = "watched"
    monitor = {"enabled": True, "interval": SCRAPE_INTERVAL, "scrapeTimeout": "1s"}
    values = operator_values(
        metrics={"serviceMonitor": monitor, "podMonitor": monitor},
        prometheusRule=RULE_VALUES,
        extraArgs=["--progress-interval=2"],
    )
    with installed(helm, release, release_ns, values):
        workdir = prometheus.workdir
        config = prometheus_config(kubectl, release_ns, discovery, workdir)
        (workdir / "prometheus.yaml").write_text(yaml.safe_dump(config))
        (rule,) = kubectl_json(kubectl, "get", "prometheusrules", "-n", release_ns)["items"]
        (workdir / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        for check in (["check", "config"], ["check", "rules"]):
            target = "prometheus.yaml" if check[1] == "config" else "rules.yaml"
            result = subprocess.run(
                ["promtool", *check, str(workdir / target)],
                check=False,
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, result.stdout + result.stderr
        discovery.start()
        prometheus.start()
        # Histograms count what happens while they are watched: scrape the operator first.
        prometheus.wait_for(
            "operator not scraped",
            lambda: bool(prometheus.query("llmjob_operator_jobs")),
            timeout=60,
        )

        jobs = Jobs(api_client, job_ns)
        # Worker 1 fails on every attempt after step 2: two restarts, then Failed.
        jobs.create(
            standin_job(
                "failing",
                venv_bin,
                standin={"steps": 30, "fail": "1:*:1:2"},
                failurePolicy={"maxRestarts": 2, "backoffSeconds": 1, "maxBackoffSeconds": 2},
            )
        )
        # Commits checkpoints up to step 3, then its step counter stops; the operator's
        # own stall timeout is far away, so only the alerts notice.
        jobs.create(
            standin_job(
                "stalling",
                venv_bin,
                standin={"steps": 1000, "stall": "1:3"},
                failurePolicy={"stallTimeoutSeconds": 3600},
            )
        )
        jobs.wait_phase("failing", "Failed", timeout=180)

        expected = {
            ("LLMJobFailed", ""),
            ("LLMJobRestartStorm", "failing"),
            ("LLMJobStalled", "stalling"),
            ("LLMJobCheckpointTooOld", "stalling"),
        }
        prometheus.wait_for(
            f"alerts firing are not {expected}", lambda: prometheus.firing() == expected
        )

        configmap = kubectl_json(
            kubectl, "get", "configmap", f"{release}-llmjob-operator-dashboard", "-n", release_ns
        )
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        exprs, variables = dashboard_queries(configmap)
        grafana = {
            "$namespace": job_ns,
            "$job": "failing|stalling",
            "$__rate_interval": "1m",
            "$__range": "10m",
        }
        empty = []
        for template in exprs:
            expr = re.sub(r"\$\w+", lambda m: grafana[m.group(0)], template)
            samples = prometheus.query(expr)
            values = [float(sample["value"][1]) for sample in samples]
            if not values or not all(math.isfinite(v) for v in values):
                empty.append((expr, samples))
        assert empty == [], "\n".join(f"{e}: {s}" for e, s in empty)
        for query in variables:
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
            assert match, query
            selector = match.group(1).replace("$namespace", job_ns)
            found = prometheus.api(f"label/{match.group(2)}/values", **{"match[]": selector})
            assert (job_ns if match.group(2) == "namespace" else "stalling") in found

        # Without its operator, only the operator alert is added.
        subprocess.run(
            [*kubectl, "scale", "deployment", f"{release}-llmjob-operator",
             "-n", release_ns, "--replicas=0"],
            check=True,
        )  # fmt: skip
        prometheus.wait_for(
            "LLMJobOperatorDown not firing",
            lambda: ("LLMJobOperatorDown", "") in prometheus.firing(),
            timeout=90,
        )
