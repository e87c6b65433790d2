"""A rate-limited delaying work queue of job keys, with client-go's semantics:

- a key is processed by one worker at a time; a key added while it is processed is
  processed once more after (`dirty`), never twice at once;
- one deadline per key: `add_after` keeps the earliest deadline of a key that is waiting,
  so every event of a job no longer stacks another timer (client-go's delaying queue);
- per-key exponential backoff on errors: `add_rate_limited` waits base * 2^failures
  (capped) and `forget` resets it once the key reconciles cleanly.
"""

import heapq
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class WorkQueue(Generic[Key]):
    def __init__(
        self,
        base_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        observe_latency: Callable[[float], None] | None = None,
    ) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._ready: list[Key] = []
        self._ready_since: dict[Key, float] = {}
        self._observe_latency = observe_latency
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        # Heap of (deadline, key); a deadline is live only while it equals _deadline[key].
        self._delayed: list[tuple[float, int, Key]] = []
        self._deadline: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._base_backoff = base_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._sequence = 0
        self.closed = threading.Event()
        self.adds = 0
        self.retries = 0

    def add(self, key: Key) -> None:
        with self._cond:
            self.adds += 1
            self._make_ready(key)

    def add_after(self, key: Key, seconds: float) -> None:
        """Process `key` in `seconds` at the latest; an earlier deadline already set wins."""
        if seconds <= 0:
            self.add(key)
            return
        with self._cond:
            due = self._clock() + seconds
            current = self._deadline.get(key)
            if current is not None and current <= due:
                return
            self._deadline[key] = due
            self._sequence += 1
            heapq.heappush(self._delayed, (due, self._sequence, key))
            self._cond.notify()

    def add_rate_limited(self, key: Key) -> float:
        """Retry `key` after its own exponential backoff; returns the delay chosen."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            self.retries += 1
        delay = min(self._base_backoff * 2.0**failures, self._max_backoff)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Key) -> None:
        """The key reconciled cleanly: its next error starts the backoff from the base."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: Key) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def get(self, timeout: float | None = None) -> Key | None:
        """The next ready key (marked active); None once the queue is closed, or when
        nothing became ready within `timeout` real seconds (None waits for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self.closed.is_set():
                    return None
                self._promote_due()
                if self._ready:
                    key = self._ready.pop(0)
                    since = self._ready_since.pop(key)
                    if self._observe_latency is not None:
                        self._observe_latency(self._clock() - since)
                    self._queued.discard(key)
                    self._active.add(key)
                    return key
                wait = self._delayed[0][0] - self._clock() if self._delayed else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: Key) -> None:
        with self._cond:
            self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._make_ready(key)

    def drop(self, key: Key) -> None:
        """The key's object is gone: no timer or backoff of it is kept."""
        with self._cond:
            self._deadline.pop(key, None)
            self._failures.pop(key, None)

    def close(self) -> None:
        with self._cond:
            self.closed.set()
            self._cond.notify_all()

    def depth(self) -> int:
        """Keys waiting to be processed now (not those waiting on a deadline)."""
        with self._cond:
            return len(self._ready)

    def waiting(self) -> int:
        """Keys with a deadline set."""
        with self._cond:
            return len(self._deadline)

    def _make_ready(self, key: Key, since: float | None = None) -> None:
        # Becoming ready satisfies any deadline: client-go drops it too.
        self._deadline.pop(key, None)
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            # A delayed key has been ready since its deadline, whenever a get() noticed.
            self._ready_since[key] = self._clock() if since is None else since
            self._cond.notify()

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._deadline.get(key) == due:
                self._make_ready(key, since=due)
