"""The work queue (modelyard.handlers.workqueue) with real threads: de-duplication, one worker a key, priorities,
bounded concurrency, timed adds. Each test waits on events it controls, never on a clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from modelyard.handlers.workqueue import HIGH, LOW, Key, WorkQueue


class Recorder:
    """A process function that records keys and, for keys in `hold`, blocks until released."""

    def __init__(self, hold: set[str] | None = None, patience: float = 10) -> None:
        self.seen: list[str] = []
        self.hold, self.patience = hold or set(), patience
        self.release = threading.Event()
        self.started = threading.Event()
        self.lock = threading.Lock()
        self.running = self.most = 0

    def __call__(self, key: Key) -> None:
        with self.lock:
            self.seen.append(key[1])
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.set()
        if key[1] in self.hold:
            assert self.release.wait(self.patience)
        with self.lock:
            self.running -= 1


def until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def k(name: str) -> Key:
    return ("ns", name)


def test_a_burst_for_one_key_is_one_reconcile_and_adds_during_a_run_make_one_more() -> None:
    r = Recorder(hold={"a"})
    q = WorkQueue(r, workers=1).start()
    q.add(k("a"))
    assert r.started.wait(10)
    for _ in range(5):
        q.add(k("a"))  # while it runs: once more afterwards, not five times
        q.add(k("b"))  # waiting: once
    assert q.depth() == 1
    r.release.set()
    until("both done", lambda: q.running() == 0 and q.depth() == 0 and len(r.seen) == 3)
    time.sleep(0.05)
    assert r.seen == ["a", "b", "a"]  # the re-run queues behind what already waited
    q.shutdown()


def test_events_go_before_the_resync_pass_and_a_promoted_key_runs_once() -> None:
    r = Recorder(hold={"blocker"})
    q = WorkQueue(r, workers=1).start()
    q.add(k("blocker"))
    assert r.started.wait(10)
    for name in ("x", "y", "z"):
        q.add(k(name), LOW)  # the resync's pass
    q.add(k("update"), HIGH)  # a watch event
    q.add(k("z"), HIGH)  # an event for a model the resync queued: it moves up, and runs once
    r.release.set()
    until("all done", lambda: len(r.seen) == 5 and q.depth() == 0)
    time.sleep(0.05)
    assert r.seen == ["blocker", "update", "z", "x", "y"]
    q.shutdown()


def test_concurrency_is_bounded_by_the_workers() -> None:
    r = Recorder(hold={f"m{i}" for i in range(6)})
    q = WorkQueue(r, workers=2).start()
    for i in range(6):
        q.add(k(f"m{i}"))
    until("two running", lambda: q.running() == 2)
    time.sleep(0.05)
    assert q.running() == 2 and q.depth() == 4
    r.release.set()
    until("all done", lambda: len(r.seen) == 6 and q.running() == 0)
    assert r.most == 2
    q.shutdown()


def test_timed_adds_keep_the_earliest_and_fire() -> None:
    r = Recorder()
    q = WorkQueue(r, workers=1).start()
    q.add_after(k("later"), 3600)
    q.add_after(k("later"), 0.01)  # earlier: replaces
    q.add_after(k("later"), 3600)  # later than the pending one: ignored
    assert q.pending_timers() == 1
    until("the timed add", lambda: r.seen == ["later"])
    assert q.pending_timers() == 0
    q.shutdown()


def test_a_closed_queue_starts_nothing_more() -> None:
    r = Recorder(hold={"a"})
    q = WorkQueue(r, workers=1).start()
    q.add(k("a"))
    assert r.started.wait(10)
    q.add(k("b"))
    q.shutdown()
    r.release.set()
    assert q.wait_idle(10)
    time.sleep(0.05)
    assert r.seen == ["a"]


def test_an_add_wakes_an_idle_worker_even_when_the_requeue_clock_waits_ahead_of_it() -> None:
    """The requeue clock waits for the next timed add; a worker waits for keys. A wake-up for a worker that reached
    the clock instead left the key queued and no worker told, and every later add of that key (watch events, the
    resync) found it queued and told nobody either: the model was not reconciled again until another model's add
    woke a worker (CI saw a lone model wait 200 s and more). Each new earliest timer wakes the clock, which then
    waits again, in some order with the idle worker; the add after it must reach the worker every time."""
    r = Recorder(hold={"busy"}, patience=60)  # held past `until`'s 10 s: its end must not wake the other worker
    q = WorkQueue(r, workers=2).start()
    q.add(k("busy"))  # one worker held: the other is the only one that can take the adds below
    assert r.started.wait(10)
    try:
        for i in range(40):
            q.add_after(k("timer"), 3600 - i)  # earlier each time: the clock is told, and waits again
            time.sleep(0.005)  # the woken threads wait again (the order is the scheduler's)
            q.add(k(f"m{i}"))
            until(f"m{i} to run on the idle worker", lambda i=i: f"m{i}" in r.seen)  # type: ignore[misc]
    finally:
        r.release.set()
        q.shutdown()
