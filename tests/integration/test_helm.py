"""The Helm chart with the real helm and API server: lint, schema, server-side dry run,
install (the operator runs as a pod with the chart's service account), RBAC minimality,
restricted pod security, helm test, upgrade and uninstall."""

import json
import subprocess
import time
import uuid
from typing import Any

import pytest
import yaml
from kubernetes import client

from llmjob_devcluster.layout import Layout
from tests.conftest import container_logs
from tests.integration.helm_chart import (
    CHART,
    Helm,
    install_monitoring_crds,
    installed,
    kubectl_json,
    operator_pod,
    operator_values,
)
from tests.integration.jobs import Jobs, standin_job

pytestmark = pytest.mark.integration

# Everything the operator may do in a namespace it reconciles, beyond what every
# authenticated user may: exactly the calls in kube.py and kopf's watches.
OPERATOR_RULES = {
    "llmtrainingjobs.training.llmjob.dev": {"get", "list", "watch", "delete"},
    "llmtrainingjobs.training.llmjob.dev/status": {"patch"},
    "llmtrainingjobs.training.llmjob.dev/finalizers": {"update"},
    "pods": {"get", "list", "watch", "create", "delete"},
    "services": {"get", "list", "watch", "create", "patch"},
    "configmaps": {"get", "list", "watch", "create", "patch"},
    "persistentvolumeclaims": {"get", "list", "watch", "create", "patch"},
    "podgroups.scheduling.x-k8s.io": {"get", "create", "patch"},
    "podgroups.scheduling.volcano.sh": {"get", "create", "patch"},
    "podgroups.scheduling.k8s.io": {"get", "create", "patch"},
    "workloads.kueue.x-k8s.io": {"get"},
    "events": {"create"},
}
# The replicas' Lease, in the release namespace in either mode: create, and get/update of the
# one Lease by name (RBAC cannot name what does not exist yet, so create is not by name).
LEASE_RULES = {"leases.coordination.k8s.io": {"create", "get", "update"}}
CLUSTER_RULES = {
    "customresourcedefinitions.apiextensions.k8s.io": {"list", "watch"},
    "nodes": {"get"},
}
ALL_OPT_INS = {
    "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
    "prometheusRule": {"enabled": True},
    "networkPolicy": {"enabled": True, "jobNamespaces": ["team-a"]},
}


@pytest.fixture(scope="module")
def monitoring_crds(kubectl: list[str]) -> None:
    install_monitoring_crds(kubectl)


def is_hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in doc["metadata"].get("annotations", {})


def can_i_list(kubectl: list[str], user: str, namespace: str) -> dict[str, set[str]]:
    """`kubectl auth can-i --list` as `user`: resource -> verbs (non-resource URLs left out)."""
    out = subprocess.run(
        [*kubectl, "auth", "can-i", "--list", "-n", namespace, f"--as={user}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rules: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:
        if line.startswith(" "):
            continue  # a non-resource URL row: no resource in the first column
        resource, _, rest = line.partition(" ")
        verbs = rest[rest.rindex("[") + 1 : rest.rindex("]")].split()
        rules.setdefault(resource, set()).update(verbs)
    return rules


def granted(kubectl: list[str], service_account: str, namespace: str) -> dict[str, set[str]]:
    """What the chart's service account may do in `namespace` beyond any service account."""
    sa_namespace, _, _ = service_account.removeprefix("system:serviceaccount:").partition(":")
    nobody = f"system:serviceaccount:{sa_namespace}:nobody-{uuid.uuid4().hex[:5]}"
    baseline = can_i_list(kubectl, nobody, namespace)
    return {
        resource: verbs - baseline.get(resource, set())
        for resource, verbs in can_i_list(kubectl, service_account, namespace).items()
        if verbs - baseline.get(resource, set())
    }


def can_i(kubectl: list[str], user: str, *args: str) -> bool:
    result = subprocess.run(
        [*kubectl, "auth", "can-i", *args, f"--as={user}"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


def assert_no_forbidden(devcluster: Layout, namespace: str, pod: str) -> None:
    """The operator's log shows no request the API server refused: its RBAC suffices."""
    log = container_logs(devcluster, namespace, pod, "operator")
    assert "llmjob operator started" in log
    assert "forbidden" not in log.lower(), log[-3000:]


def reporting_instances(jobs: Jobs, name: str) -> set[str]:
    return {e.reporting_instance for e in jobs.events(name) if e.reporting_instance}


# -- static checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [{}, ALL_OPT_INS, {**ALL_OPT_INS, "watchNamespaces": ["team-a", "team-b"]}],
    ids=["defaults", "opt-ins", "namespaced"],
)
def test_lint_strict(helm: Helm, values: dict[str, Any]) -> None:
    result = helm.run("lint", "--strict", str(CHART), "-f", helm.values_file(values))
    assert "0 chart(s) failed" in result.stdout


def test_defaults_run_two_replicas_that_elect_a_leader(helm: Helm) -> None:
    docs = helm.template({}, namespace="ops", release="r")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    pod = spec["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    )
    assert {
        "--leader-election-lease-name=r-llmjob-operator",
        "--leader-election-namespace=ops",
        "--leader-election-lease-duration=15",
        "--leader-election-renew-deadline=10",
        "--leader-election-retry-period=2",
    } <= set(pod["containers"][0]["args"])
    (budget,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert budget["spec"] == {"minAvailable": 1, "selector": spec["selector"]}
    (role,) = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-election")
    ]
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["r-llmjob-operator"],
            "verbs": ["get", "update"],
        },
    ]
    # One replica: no budget (minAvailable 1 would block every drain); own affinity replaces ours.
    single = helm.template({"replicaCount": 1, "affinity": {"nodeAffinity": {}}})
    assert not [d for d in single if d["kind"] == "PodDisruptionBudget"]
    (deployment,) = [d for d in single if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {}}


def test_dashboard_has_the_panels_and_a_job_variable(helm: Helm) -> None:
    (configmap,) = [
        doc for doc in helm.template({}) if doc["kind"] == "ConfigMap" and is_dashboard(doc)
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["llmjob-training.json"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["job"]["query"]["query"].endswith(", job_name)")
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert {p["title"] for p in panels} >= {
        "Jobs by phase",
        "Restarts by reason",
        "Step",
        "Loss",
        "Tokens per second",
        "MFU",
        "Step time",
        "Checkpoint age",
        "Checkpoint duration",
        "Startup: creation to all workers Running",
        "Recovery: failure to all workers Running again",
    }
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        if panel["title"] not in {"Jobs by phase", "Restarts by reason"} and not panel[
            "title"
        ].startswith(("Startup", "Recovery")):
            # Per-job panels follow the variables.
            assert all('job_name=~"$job"' in t["expr"] for t in panel["targets"]), panel


def is_dashboard(doc: dict[str, Any]) -> bool:
    return doc["metadata"]["name"].endswith("-dashboard")


@pytest.mark.parametrize("mode", ["cluster", "namespaced"])
def test_rendered_chart_is_accepted_by_the_api_server(
    helm: Helm,
    kubectl: list[str],
    restricted_namespaces: Any,
    crd_installed: None,
    monitoring_crds: None,
    mode: str,
) -> None:
    release_ns = restricted_namespaces("llmjob-dry")
    job_ns = restricted_namespaces("team-dry")
    values: dict[str, Any] = {
        **ALL_OPT_INS,
        "networkPolicy": {"enabled": True, "jobNamespaces": [job_ns]},
    }
    if mode == "namespaced":
        values["watchNamespaces"] = [job_ns]
    docs = helm.template(values, namespace=release_ns)
    kinds = {doc["kind"] for doc in docs}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"} <= kinds
    roles = [doc for doc in docs if doc["kind"] == "Role" and not is_hook(doc)]
    operator_roles = [r for r in roles if not r["metadata"]["name"].endswith("-leader-election")]
    assert [r["metadata"]["namespace"] for r in operator_roles] == (
        [job_ns] if mode == "namespaced" else []
    )
    # The Lease's Role is the release namespace's in either mode.
    assert [r["metadata"]["namespace"] for r in roles if r not in operator_roles] == [release_ns]
    # The test hook's Pod is admitted only once its ServiceAccount exists, as when
    # `helm test` creates the hooks in weight order: create that one for real (the
    # namespace goes away after the test).
    hook_account = next(doc for doc in docs if doc["kind"] == "ServiceAccount" and is_hook(doc))
    subprocess.run(
        [*kubectl, "apply", "-f", "-"], input=yaml.safe_dump(hook_account), text=True, check=True
    )
    result = subprocess.run(
        [*kubectl, "apply", "--dry-run=server", "-f", "-"],
        check=False,
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    # Pod Security admission warns about Deployments and rejects Pods (the test hook) in
    # a namespace that enforces `restricted`: neither may happen.
    assert "violate" not in result.stderr, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"leaderElection": {"leaseDuration": 15}}, "/leaderElection"),
        ({"metrics": {"serviceMonitor": {"intervall": "1m"}}}, "'intervall' not allowed"),
        ({"metricsPort": "8080"}, "got string, want integer"),
        ({"logLevel": "TRACE"}, "/logLevel"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"containerSecurityContext": {"privileged": True}}, "/containerSecurityContext"),
        ({"prometheusRule": {"stalled": {"window": "ten minutes"}}}, "/prometheusRule/stalled"),
        ({"tolerations": [{"key": "gpu", "effect": "Sometimes"}]}, "/tolerations/0/effect"),
        ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
        ({"specPolicy": {"allowHostPath": True}}, "'allowHostPath' not allowed"),
    ],
    ids=lambda v: "" if isinstance(v, dict) else v,
)
def test_schema_rejects_bad_values(helm: Helm, values: dict[str, Any], message: str) -> None:
    result = helm.run("template", "x", str(CHART), "-f", helm.values_file(values), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


# -- installed on the local cluster -----------------------------------------------------


def test_install_reconciles_in_cluster_then_upgrade_and_uninstall_leave_nothing(
    helm: Helm,
    api_client: client.ApiClient,
    kubectl: list[str],
    restricted_namespaces: Any,
    crd_installed: None,
    venv_bin: str,
    devcluster: Layout,
) -> None:
    release_ns = restricted_namespaces("llmjob-system")
    job_ns = restricted_namespaces("team-a")
    release = "llmjob"
    service_account = f"system:serviceaccount:{release_ns}:{release}-llmjob-operator"
    values = operator_values()
    with installed(helm, release, release_ns, values):
        pod = operator_pod(api_client, release_ns, release)
        # Admitted in a namespace that enforces `restricted`, with the chart's account.
        assert pod.spec.service_account_name == f"{release}-llmjob-operator"
        assert pod.spec.security_context.run_as_non_root
        assert pod.spec.containers[0].security_context.read_only_root_filesystem
        assert any(v.projected for v in pod.spec.volumes), "no service account token volume"

        jobs = Jobs(api_client, job_ns)
        jobs.create(standin_job("first", venv_bin, standin={"steps": 3}))
        # (Whether it needed a restart is the operator's business, tested elsewhere: on a
        # loaded machine a gang may be restarted, and still succeeds.)
        jobs.wait_phase("first", "Succeeded", timeout=180)
        # The operator names its pod (its hostname) in the events it posts: this job was
        # reconciled by the chart's pod, with nothing but its service account token.
        assert reporting_instances(jobs, "first") == {pod.metadata.name}
        assert_no_forbidden(devcluster, release_ns, pod.metadata.name)
        # Trainer pods ran in the restricted namespace too.
        assert {p.status.phase for p in jobs.pods("first")} == {"Succeeded"}

        assert helm.run("test", release, "-n", release_ns).returncode == 0

        assert granted(kubectl, service_account, job_ns) == {**OPERATOR_RULES, **CLUSTER_RULES}
        assert granted(kubectl, service_account, release_ns) == {
            **OPERATOR_RULES,
            **CLUSTER_RULES,
            **LEASE_RULES,
        }
        lease = f"leases/{release}-llmjob-operator"
        assert can_i(kubectl, service_account, "update", lease, "-n", release_ns)
        assert not can_i(kubectl, service_account, "update", "leases/another", "-n", release_ns)
        assert not can_i(kubectl, service_account, "get", "leases", "-n", job_ns)
        # The one pod leads: the Lease names it (client-go's identity: pod name + suffix).
        holder = (
            client.CoordinationV1Api(api_client)
            .read_namespaced_lease(f"{release}-llmjob-operator", release_ns)
            .spec.holder_identity
        )
        assert holder.startswith(f"{pod.metadata.name}_")
        for namespace in (job_ns, release_ns, "kube-system"):
            for verb in ("get", "list", "watch"):
                assert not can_i(kubectl, service_account, verb, "secrets", "-n", namespace)
        assert not can_i(kubectl, service_account, "list", "namespaces")
        assert not can_i(kubectl, service_account, "update", "llmtrainingjobs", "-n", job_ns)

        # Upgrade to namespaced mode: the operator is replaced (one pod at a time, no surge), and
        # its cluster-wide role and binding go; the Role in the watched namespace replaces them.
        helm.run(
            "upgrade", release, str(CHART), "-n", release_ns,
            "-f", helm.values_file({**values, "logLevel": "DEBUG", "watchNamespaces": [job_ns]}),
            "--wait", "--timeout=180s",
        )  # fmt: skip
        upgraded = operator_pod(api_client, release_ns, release)
        assert upgraded.metadata.name != pod.metadata.name
        assert {"--log-level=DEBUG", f"--namespace={job_ns}"} <= set(
            upgraded.spec.containers[0].args
        )
        fullname = f"{release}-llmjob-operator"
        cluster_roles = kubectl_json(kubectl, "get", "clusterroles,clusterrolebindings")["items"]
        assert fullname not in {o["metadata"]["name"] for o in cluster_roles}
        assert granted(kubectl, service_account, release_ns) == LEASE_RULES
        assert granted(kubectl, service_account, job_ns) == OPERATOR_RULES
        jobs.create(standin_job("second", venv_bin, standin={"steps": 2}))
        jobs.wait_phase("second", "Succeeded", timeout=180)
        assert reporting_instances(jobs, "second") == {upgraded.metadata.name}
        assert_no_forbidden(devcluster, release_ns, upgraded.metadata.name)

        helm.run("uninstall", release, "-n", release_ns, "--wait", "--timeout=120s")
        assert_nothing_left(kubectl, release, release_ns)


def assert_nothing_left(kubectl: list[str], release: str, release_ns: str) -> None:
    selector = f"app.kubernetes.io/instance={release}"
    deadline = time.monotonic() + 60
    kinds = (
        "deployments,replicasets,pods,services,serviceaccounts,configmaps,secrets,roles,"
        "rolebindings,networkpolicies"
    )
    cluster_kinds = "clusterroles,clusterrolebindings,validatingwebhookconfigurations"
    while True:
        left = kubectl_json(kubectl, "get", kinds, "-A", "-l", selector)["items"]
        left += kubectl_json(kubectl, "get", cluster_kinds, "-l", selector)["items"]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in left] == []
    user_roles = kubectl_json(kubectl, "get", "clusterroles")["items"]
    assert not {r["metadata"]["name"] for r in user_roles} & {
        "llmjob-admin",
        "llmjob-edit",
        "llmjob-view",
    }
    # The CRD (and so every user's jobs) survives: helm never deletes crds/.
    kubectl_json(kubectl, "get", "crd", "llmtrainingjobs.training.llmjob.dev")


def test_namespaced_install_is_confined_to_its_namespaces(
    helm: Helm,
    api_client: client.ApiClient,
    kubectl: list[str],
    restricted_namespaces: Any,
    crd_installed: None,
    venv_bin: str,
    devcluster: Layout,
) -> None:
    release_ns = restricted_namespaces("llmjob-ns")
    watched = restricted_namespaces("team-w")
    other = restricted_namespaces("team-o")
    release = "scoped"
    service_account = f"system:serviceaccount:{release_ns}:{release}-llmjob-operator"
    values = operator_values(watchNamespaces=[watched], rbac={"create": True, "userRoles": False})
    with installed(helm, release, release_ns, values):
        assert granted(kubectl, service_account, watched) == OPERATOR_RULES
        # Nothing anywhere else, nor cluster-wide; in its own namespace, only its Lease.
        assert granted(kubectl, service_account, other) == {}
        assert granted(kubectl, service_account, release_ns) == LEASE_RULES
        assert not can_i(kubectl, service_account, "list", "customresourcedefinitions")
        assert not can_i(kubectl, service_account, "list", "llmtrainingjobs", "-A")
        assert not can_i(kubectl, service_account, "list", "pods", "-A")
        assert not can_i(kubectl, service_account, "get", "secrets", "-n", watched)

        ignored = Jobs(api_client, other)
        ignored.create(standin_job("elsewhere", venv_bin, standin={"steps": 2}))
        jobs = Jobs(api_client, watched)
        jobs.create(standin_job("mine", venv_bin, standin={"steps": 2}))
        jobs.wait_phase("mine", "Succeeded", timeout=180)
        operator = operator_pod(api_client, release_ns, release).metadata.name
        assert reporting_instances(jobs, "mine") == {operator}
        assert_no_forbidden(devcluster, release_ns, operator)
        assert ignored.status("elsewhere") == {}
        assert ignored.pods("elsewhere") == []

        assert helm.run("test", release, "-n", release_ns).returncode == 0
        helm.run("uninstall", release, "-n", release_ns, "--wait", "--timeout=120s")
        assert_nothing_left(kubectl, release, release_ns)
