"""The node agent's use of the official kubernetes client: typed API objects in, plain
JSON-shaped dicts (camelCase keys, as in manifests) out, so the agent reads pods the
way `kubectl get -o json` shows them.

Like a kubelet, the agent must outlive any API server outage: every call has a request
time-out (REQUEST_TIMEOUT) and `watch_forever` lists, watches, and on any error retries
with capped exponential backoff, resuming from the last resourceVersion it saw and
relisting when the server answers 410 Gone (client-go's reflector does the same)."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, watch

Obj = dict[str, Any]
T = TypeVar("T")

log = logging.getLogger("llmjob_devcluster.kube")

# (connect, read) seconds for every ordinary call: a lease renewal must not hang for longer
# than a lease lasts when the API server stops answering.
REQUEST_TIMEOUT = (3.0, 10.0)
# The server ends each watch after this long (the watch is then resumed, not relisted), and
# the client gives up on a silent connection a little later: a server that hangs without
# closing the socket is noticed too. Bookmarks keep the resumed resourceVersion recent.
WATCH_SECONDS = 60
WATCH_READ_TIMEOUT = (3.0, WATCH_SECONDS + 15.0)
# Errors a call can end with when the API server is down, restarting or overloaded.
CONNECTION_ERRORS = (client.ApiException, urllib3.exceptions.HTTPError, OSError)


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


class Backoff:
    """Capped exponential delays with full jitter, as client-go's reflector backs off
    (so that many watchers do not reconnect in step); `reset` after a success."""

    def __init__(self, initial: float = 0.5, cap: float = 8.0) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


def watch_forever(
    list_function: Callable[..., Any],
    api: client.ApiClient,
    *,
    what: str,
    on_list: Callable[[list[Obj]], None],
    on_event: Callable[[str, Obj], None],
    stopping: threading.Event,
    **selectors: Any,
) -> None:
    """Lists, then watches `list_function` (with `selectors`) until `stopping` is set.
    `on_list` gets every object of a (re)list, so it can drop what vanished; `on_event`
    gets each later ADDED/MODIFIED/DELETED. Errors never end the loop."""
    backoff = Backoff()
    resource_version: str | None = None
    expired_since_last_event = False
    while not stopping.is_set():
        try:
            if resource_version is None:
                listing = as_dict(api, list_function(**selectors, _request_timeout=REQUEST_TIMEOUT))
                _handling(on_list, listing["items"])
                resource_version = listing["metadata"]["resourceVersion"]
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                list_function,
                **selectors,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=WATCH_READ_TIMEOUT,
            )
            for event in stream:
                backoff.reset()
                expired_since_last_event = False
                body: Obj = event["raw_object"]
                resource_version = body["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    _handling(on_event, event["type"], body)
                if stopping.is_set():
                    return
        except client.ApiException as error:
            if error.status == 410:
                # Too old a resourceVersion (compaction, a restarted API server's watch
                # cache): only a fresh list can say what changed, deletions included. The
                # first relist is at once (the server answered, so it is up); a second 410
                # without an event in between backs off.
                resource_version = None
                if not expired_since_last_event:
                    expired_since_last_event = True
                    log.warning("%s: relisting now after: %s", what, _brief(error))
                    continue
            _retry_later(what, error, backoff, stopping)
        except HandlerError as error:
            # A handler failed (a bug, or its own API call): relist, so that every object
            # is handled again, rather than skip past the event.
            log.exception("%s: handler failed, relisting", what, exc_info=error.__cause__)
            resource_version = None
            _retry_later(what, error, backoff, stopping)
        except Exception as error:  # the API server down, restarting or overloaded: retry
            _retry_later(what, error, backoff, stopping)


class HandlerError(Exception):
    """A watch_forever handler raised (the original error is the cause)."""


def _handling(handler: Callable[..., None], *args: Any) -> None:
    try:
        handler(*args)
    except Exception as error:
        raise HandlerError(f"{type(error).__name__}: {error}") from error


def call_until_done(what: str, call: Callable[[], object], stopping: threading.Event) -> None:
    """Calls `call` until it succeeds (or `stopping` is set), backing off between tries."""
    backoff = Backoff()
    while not stopping.is_set():
        try:
            call()
            return
        except CONNECTION_ERRORS as error:
            _retry_later(what, error, backoff, stopping)


def _retry_later(what: str, error: Exception, backoff: Backoff, stopping: threading.Event) -> None:
    delay = backoff.next_delay()
    again = "relisting" if isinstance(error, HandlerError) or _is_gone(error) else "retrying"
    log.warning("%s: %s in %.1fs after: %s", what, again, delay, _brief(error))
    stopping.wait(delay)


def _is_gone(error: Exception) -> bool:
    return isinstance(error, client.ApiException) and error.status == 410


def _brief(error: Exception) -> str:
    if isinstance(error, client.ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
