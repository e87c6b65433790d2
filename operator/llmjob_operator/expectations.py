"""Pod creates sent but not yet seen by the watch: client-go's ControllerExpectations.

A create returns before its ADDED event reaches the cache. A reconcile that ran in between
would plan from a cache missing that pod, and a gang whose first workers are already Running
with one missing is a vanished worker: a restart nothing asked for (KWOK marks a pod Running
within milliseconds, so the scale smoke met this). So each create is expected before it is
sent, and the job is not reconciled until every expected pod has been seen: by any watch
event of it (even DELETED, a pod gone before the reconcile ran), or in the cache (a relist, or
a create that found the pod already there). That event wakes the job, so nothing waits.

An expectation no event ever meets (a create and delete inside a watch gap) lapses after
client-go's five minutes rather than holding the job forever.
"""

import threading
import time
from collections.abc import Callable

from llmjob_operator.store import JobKey

EXPECTATION_TTL_SECONDS = 300.0


class CreateExpectations:
    def __init__(
        self,
        ttl_seconds: float = EXPECTATION_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._expected: dict[JobKey, dict[str, float]] = {}
        """job -> pod name -> when its create was expected."""

    def expect(self, key: JobKey, pod: str) -> None:
        """Called before the create is sent, so its event cannot come first."""
        with self._lock:
            self._expected.setdefault(key, {})[pod] = self._clock()

    def observed(self, key: JobKey, pod: str) -> None:
        """A watch event of the pod, or its create failed (nothing is coming)."""
        with self._lock:
            pods = self._expected.get(key)
            if pods is not None:
                pods.pop(pod, None)
                if not pods:
                    del self._expected[key]

    def pending(self, key: JobKey, in_cache: Callable[[str], bool]) -> bool:
        """Whether an expected pod of the job is still unseen; a pod `in_cache` counts as
        seen."""
        with self._lock:
            pods = self._expected.get(key)
            if pods is None:
                return False
            lapsed = self._clock() - self._ttl
            for name in [n for n, since in pods.items() if since <= lapsed or in_cache(n)]:
                del pods[name]
            if not pods:
                del self._expected[key]
                return False
            return True

    def forget(self, key: JobKey) -> None:
        """The job is gone: nothing of it is waited for."""
        with self._lock:
            self._expected.pop(key, None)
