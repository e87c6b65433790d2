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


class Request(NamedTuple):
    verb: str  # as the server labels it: GET, LIST, WATCH, CREATE, PATCH, APPLY, DELETE, ...
    group: str  # "" for the core group
    resource: str
    subresource: str
    code: str


def snapshot(api_client: client.ApiClient) -> Counter[Request]:
    """Every request the API server has counted since it started, by verb/resource/code."""
    response = api_client.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False
    )[0]
    counts: Counter[Request] = Counter()
    for family in text_string_to_metric_families(response.data.decode()):
        if family.name != "apiserver_request":  # the parser drops the _total suffix
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            key = Request(
                labels.get("verb", ""),
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
    """The requests counted since `before` was taken."""
    after = snapshot(api_client)
    after.subtract(before)
    return +after
