"""The node agent's use of the official kubernetes client: typed API objects in, plain
JSON-shaped dicts (camelCase keys, as in manifests) out, so the agent reads pods the
way `kubectl get -o json` shows them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config, watch

Obj = dict[str, Any]
T = TypeVar("T")


def api_client(kubeconfig: Path) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api


def as_dict(api: client.ApiClient, obj: Any) -> Obj:
    result: Obj = api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return result


def now() -> str:
    """An RFC 3339 timestamp in the form the API server writes (whole seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """A MicroTime, as Leases use."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_status(error: client.ApiException, *codes: int) -> bool:
    return error.status in codes


def model(cls: type[T], body: Obj) -> T:
    """A typed client model from a manifest-shaped dict (the client's from_dict)."""
    result = cls.from_dict(body)  # type: ignore[attr-defined]
    if result is None:
        raise ValueError(f"cannot build {cls.__name__} from {body!r}")
    return result  # type: ignore[no-any-return]


def watch_events(list_function: Callable[..., Any], **kwargs: Any) -> Iterator[tuple[str, Obj]]:
    """(event type, object as dict) from a watch on `list_function`."""
    stream = watch.Watch().stream(list_function, **kwargs)  # type: ignore[no-untyped-call]
    for event in stream:
        yield event["type"], event["raw_object"]
