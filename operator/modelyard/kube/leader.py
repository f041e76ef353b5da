"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection package does it.

Each operator replica is a candidate with its own identity (host name and a random suffix). Every `retry_period`
a candidate reads the Lease and:

- takes it when nobody holds it, or when the holder's record has not changed for the holder's
  leaseDurationSeconds by the candidate's own clock (a dead holder stops renewing; measuring the silence locally,
  as client-go does, makes clock skew between nodes harmless);
- renews it when it holds it.

Writes are compare-and-swap: create fails when another candidate created the Lease first, update fails when the
resourceVersion moved. A leader that cannot renew for `renew_deadline` stops leading (the operator then exits and
restarts as a candidate, as controller-runtime's managers do), well before a candidate may take the Lease at
`lease_seconds`. On a graceful stop the leader releases the Lease (holder cleared), so another replica takes over
at its next try instead of waiting for the lease to run out.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiException

from modelyard.kube.client import Kube, Resource

log = logging.getLogger(__name__)

LEASES = Resource("coordination.k8s.io", "v1", "leases")


@dataclass(frozen=True)
class Timing:
    """client-go's defaults."""

    lease_seconds: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def identity() -> str:
    return f"{socket.gethostname()[:200]}_{uuid.uuid4().hex[:8]}"


def _micro(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def may_take(spec: dict[str, Any], me: str, unchanged_for: float, lease_seconds: int) -> bool:
    """May candidate `me` write itself into a Lease with this spec, whose record it has seen unchanged for
    `unchanged_for` seconds? Yes when it is free, its own, or its holder has gone silent for its duration."""
    holder = spec.get("holderIdentity") or ""
    return not holder or holder == me or unchanged_for >= float(spec.get("leaseDurationSeconds") or lease_seconds)


def held_by(spec: dict[str, Any], me: str, now: datetime, lease_seconds: int) -> dict[str, Any]:
    """The Lease spec that records `me` as the holder now: a renewal keeps acquireTime; taking an existing Lease
    (from a holder, or released) counts a transition, as client-go counts them; a new Lease starts at 0."""
    taking = spec.get("holderIdentity") != me
    return {
        "holderIdentity": me,
        "leaseDurationSeconds": lease_seconds,
        "acquireTime": _micro(now) if taking else spec.get("acquireTime") or _micro(now),
        "renewTime": _micro(now),
        "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (1 if taking and spec else 0),
    }


class LeaderElector:
    """Runs the election in a thread; `on_started` runs when this replica becomes the leader, `on_lost` when it
    stops being the leader without being asked to (it should end the process)."""

    def __init__(self, kube: Kube, namespace: str, name: str, on_started: Callable[[], None],
                 on_lost: Callable[[], None], timing: Timing = Timing(), me: str | None = None) -> None:
        # Each call (a read and a write a try) gives up within half the renew deadline, as client-go bounds a try by
        # it: a leader never waits on the API server past the moment another replica may take the Lease.
        self.kube, self.namespace, self.name = kube.with_timeout(timing.renew_deadline / 2), namespace, name
        self.on_started, self.on_lost, self.timing = on_started, on_lost, timing
        self.me = me or identity()
        self.leading = threading.Event()
        self._stop = threading.Event()
        self._seen: tuple[str, str] | None = None
        self._seen_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> LeaderElector:
        log.info("leader election: candidate %s for Lease %s/%s", self.me, self.namespace, self.name)
        self._thread.start()
        return self

    def _run(self) -> None:
        renewed = time.monotonic()
        while not self._stop.is_set():
            try:
                held = self._try()
            except Exception as exc:  # an election outlives any one failure (API errors, a reset connection)
                log.warning("leader election: could not read or write the Lease (%s)", str(exc)[:300])
                held = False
            now = time.monotonic()
            if held:
                renewed = now
                if not self.leading.is_set():
                    self.leading.set()
                    log.info("leader election: %s is the leader", self.me)
                    self.on_started()
            elif self.leading.is_set() and now - renewed > self.timing.renew_deadline:
                self.leading.clear()
                log.error("leader election: %s could not renew the Lease for %.0fs: no longer the leader", self.me,
                          now - renewed)
                self.on_lost()
                return
            self._stop.wait(self.timing.retry_period)

    def _try(self) -> bool:
        lease = self.kube.get(LEASES, self.namespace, self.name)
        now = datetime.now(UTC)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": held_by({}, self.me, now, self.timing.lease_seconds)}
            return self.kube.create(LEASES, self.namespace, body) is not None
        spec = lease.get("spec") or {}
        record = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        if not may_take(spec, self.me, time.monotonic() - self._seen_at, self.timing.lease_seconds):
            return False
        lease["spec"] = held_by(spec, self.me, now, self.timing.lease_seconds)
        return self.kube.replace(LEASES, self.namespace, self.name, lease) is not None

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; the leader clears its hold on the Lease so that another replica takes over now."""
        self._stop.set()
        self._thread.join(timeout=self.timing.retry_period + 5)
        if release and self.leading.is_set():
            self.leading.clear()
            try:
                lease = self.kube.get(LEASES, self.namespace, self.name)
                if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.me:
                    lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1,
                                     "renewTime": _micro(datetime.now(UTC))}
                    self.kube.replace(LEASES, self.namespace, self.name, lease)
                    log.info("leader election: %s released the Lease", self.me)
            except (ApiException, OSError) as exc:
                log.warning("leader election: could not release the Lease (%s); it runs out in %ss",
                            str(exc)[:300], self.timing.lease_seconds)
