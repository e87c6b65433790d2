"""What the API server itself counted: `apiserver_request_total` from kube-apiserver's /metrics.

Budget tests take a snapshot before and after a behaviour and assert on the difference, so
they hold the operator to the server's own numbers rather than to anything it reports.
The counter has no user label: tests pick requests only the component under test makes
(for example PATCHes of llmtrainingjobs/status are the operator's alone).
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

_COUNTER = "apiserver_request_total"


# The server labels a create POST and an update PUT (the HTTP methods), a server-side apply APPLY.
WRITES = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})


class Request(NamedTuple):
    # As the server labels it: GET, LIST, WATCH, POST (a create), PUT, PATCH, APPLY (a
    # server-side apply), DELETE, DELETECOLLECTION, CONNECT.
    verb: str
    group: str  # "" for the core group
    resource: str
    subresource: str
    code: str


def snapshot(api_client: client.ApiClient) -> Counter[Request]:
    """Every request the API server has counted since it started, by verb/resource/code."""
    # The raw request of kubernetes-client >= 32 (the generated methods cover only the API).
    request = api_client.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = api_client.call_api(*request, _request_timeout=(3, 30))
    body: bytes = response.read()  # type: ignore[no-untyped-call]
    if response.status != 200:
        raise client.ApiException(status=response.status, reason=response.reason)
    return parse(body.decode())


def parse(metrics_text: str) -> Counter[Request]:
    """`apiserver_request_total` from the text of kube-apiserver's /metrics, summed over the
    labels Request leaves out (version, scope, component, dry_run)."""
    # The whole page is megabytes of histograms; only the counter's own lines are parsed.
    family_lines = "\n".join(
        line
        for line in metrics_text.splitlines()
        if line.startswith(_COUNTER)
        or line.startswith(("# HELP " + _COUNTER, "# TYPE " + _COUNTER))
    )
    counts: Counter[Request] = Counter()
    for family in text_string_to_metric_families(family_lines + "\n"):
        for sample in family.samples:
            if sample.name != _COUNTER:
                continue
            labels = sample.labels
            verb = labels.get("verb", "")
            if verb == "DELETE" and labels.get("scope") == "namespace":
                # The server labels a delete of a whole collection DELETE too, told apart only
                # by its scope: the namespace controller emptying a deleted namespace sends them
                # (a test's own namespace, deleted while the next test counts).
                verb = "DELETECOLLECTION"
            key = Request(
                verb,
                labels.get("group", ""),
                labels.get("resource", ""),
                labels.get("subresource", ""),
                labels.get("code", ""),
            )
            counts[key] += int(sample.value)
    return counts


def count(
    delta: Counter[Request],
    *,
    verbs: set[str] | None = None,
    resource: str | None = None,
    subresource: str | None = None,
) -> int:
    """How many requests in `delta` match: any verb of `verbs`, the resource, the subresource."""
    return sum(
        n
        for request, n in delta.items()
        if (verbs is None or request.verb in verbs)
        and (resource is None or request.resource == resource)
        and (subresource is None or request.subresource == subresource)
    )


def since(api_client: client.ApiClient, before: Counter[Request]) -> Counter[Request]:
    """The requests counted since `before` was taken. Raises if the API server restarted
    in between (its counters start again from zero, so a difference would mean nothing)."""
    after = snapshot(api_client)
    after.subtract(before)
    if any(n < 0 for n in after.values()):
        raise ServerRestartedError("kube-apiserver restarted between the snapshots")
    return +after


class ServerRestartedError(RuntimeError):
    pass
