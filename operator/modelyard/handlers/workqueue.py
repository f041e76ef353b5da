"""The operator's work queue, after client-go's workqueue: what reconciles when, and how many at once.

- A key (namespace, name) is queued at most once: a burst of watch events for one model is one reconcile.
- A key is given to one worker at a time; added again while it runs, it runs once more afterwards (the events
  that came meanwhile are not lost), still once however many came.
- Two priorities: watch events and timed requeues go before the periodic resync's pass, so an update to one model
  is not queued behind a resync of a thousand others; a resync entry that an event promotes moves up.
- A fixed number of workers: bounded concurrency across models.
- add_after: a timed add (a rollout's next analysis, a drain's end, a retry after a failure); one pending time a
  key, the earliest wins.

One lock, and a condition for each kind of waiter: workers wait for keys, the requeue clock for its next timer,
wait_idle for the running reconciles to end. A wake-up for a worker can then only reach a worker (with one shared
condition, `notify()` could wake the clock instead, and the key waited, queued, with no worker told).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

Key = tuple[str, str]
HIGH, LOW = 0, 1


class WorkQueue:
    def __init__(self, process: Callable[[Key], None], workers: int = 4) -> None:
        self._process = process
        self._workers = workers
        self._lock = threading.Lock()
        self._keys = threading.Condition(self._lock)
        """Workers wait on it: a key was queued, or the queue closed."""
        self._timer = threading.Condition(self._lock)
        """The requeue clock waits on it: an earlier timer, or the queue closed."""
        self._idle = threading.Condition(self._lock)
        """wait_idle waits on it: a reconcile ended."""
        self._lanes: tuple[deque[Key], deque[Key]] = (deque(), deque())
        self._queued: dict[Key, int] = {}  # key -> the lane it waits in
        self._running: set[Key] = set()
        self._again: dict[Key, int] = {}  # added while running: queued again when it ends, at this priority
        self._due: dict[Key, float] = {}  # monotonic time of each key's pending timed add
        self._timers: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._closed = False
        self._threads: list[threading.Thread] = []

    # --- adding ---------------------------------------------------------------------------------------------------
    def add(self, key: Key, priority: int = HIGH) -> None:
        with self._lock:
            if self._closed:
                return
            if key in self._running:
                self._again[key] = min(priority, self._again.get(key, LOW))
                return
            lane = self._queued.get(key)
            if lane is not None and lane <= priority:
                return  # already waiting, as early or earlier
            self._queued[key] = priority  # a LOW entry left behind in its lane is skipped when popped
            self._lanes[priority].append(key)
            self._keys.notify()

    def add_after(self, key: Key, delay: float) -> None:
        due = time.monotonic() + max(delay, 0.0)
        with self._lock:
            if self._closed or (key in self._due and self._due[key] <= due):
                return
            self._due[key] = due
            heapq.heappush(self._timers, (due, next(self._seq), key))
            self._timer.notify()

    # --- what is there --------------------------------------------------------------------------------------------
    def depth(self) -> int:
        """Keys waiting for a worker."""
        with self._lock:
            return len(self._queued)

    def pending_timers(self) -> int:
        with self._lock:
            return len(self._due)

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    # --- running --------------------------------------------------------------------------------------------------
    def start(self) -> WorkQueue:
        self._threads = [threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
                         for i in range(self._workers)]
        self._threads.append(threading.Thread(target=self._clock, name="requeue-clock", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def _next(self) -> Key | None:
        """The next key for a worker (high lane first), or None once closed. Called with the lock held."""
        while True:
            if self._closed:
                return None
            for lane_no, lane in enumerate(self._lanes):
                while lane:
                    key = lane.popleft()
                    if self._queued.get(key) == lane_no:  # not a stale entry of a promoted key
                        del self._queued[key]
                        self._running.add(key)
                        return key
            self._keys.wait()

    def _work(self) -> None:
        while True:
            with self._lock:
                key = self._next()
            if key is None:
                return
            try:
                self._process(key)
            except Exception:  # the process function reports its own failures; a worker must outlive any
                log.exception("reconcile of %s/%s raised", *key)
            finally:
                with self._lock:
                    self._running.discard(key)
                    again = self._again.pop(key, None)
                    self._idle.notify_all()
                if again is not None:
                    self.add(key, again)

    def _clock(self) -> None:
        while True:
            ready: list[Key] = []
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    due, _, key = heapq.heappop(self._timers)
                    if self._due.get(key) == due:
                        del self._due[key]
                        ready.append(key)
                if not ready:
                    wait = self._timers[0][0] - now if self._timers else None
                    self._timer.wait(timeout=wait)
            for key in ready:
                self.add(key, HIGH)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no reconcile runs (the queue may still hold keys); False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._running, timeout=timeout)

    def shutdown(self) -> None:
        """Give no more keys to workers; the running reconciles finish on their own."""
        with self._lock:
            self._closed = True
            self._keys.notify_all()
            self._timer.notify_all()
            self._idle.notify_all()
