"""The operator's process: kopf runs it (start-up, signals, logging, liveness), the caches watch, a queue works.

The operator is level-triggered: every watch event of a ModelDeployment or of one of its children, and a
periodic resync, queues the same reconcile of the model (handlers/workqueue.py: a key at most once, events before
the resync's pass, a fixed number of workers, timed requeues and retries with back-off). The watches are the
informers of kube/cache.py, whose stores the reconcile reads: a reconcile with nothing to change makes no request,
and the resync is a pass over the stored models. kopf's own watches are not used: its change-tracking handlers
(on.create/update) store a diff base on the object, timers add a finalizer (this operator writes nothing on a
ModelDeployment but its status), and a watch of its that restarts cannot tell which objects went meanwhile, which
a cache must know.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import defaultdict
from typing import Any

import kopf
import urllib3
from kubernetes.client import ApiException
from pydantic import ValidationError

from modelyard.api.conditions import Reason
from modelyard.api.names import LABEL_DEPLOYMENT
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.api.v1alpha1.rollout import Analysis, Measurement
from modelyard.handlers.workqueue import HIGH, LOW, WorkQueue
from modelyard.kube.cache import CACHED, CachedKube, Caches, EventHandler
from modelyard.kube.client import DEPLOYMENTS, JOBS, MODEL_DEPLOYMENTS, PODS, Kube, Obj, Resource, load_api_client
from modelyard.kube.leader import LeaderElector
from modelyard.measure.prometheus import Prometheus, measure
from modelyard.measure.promql import Backend
from modelyard.metrics import (
    LEADER,
    MODELS,
    QUEUE_DEPTH,
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
    RECONCILES,
    RECONCILES_RUNNING,
    REQUEUES_PENDING,
    ROLLOUT_EVENTS,
)
from modelyard.reconcile.model_deployment import reconcile_model_deployment, report_invalid_spec
from modelyard.reconcile.rollout import Analyst
from modelyard.settings import Settings

log = logging.getLogger("modelyard")

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_state: dict[str, Any] = {}
_leading = threading.Event()
"""Set while this replica may reconcile: always without leader election, while it holds the Lease with it."""
_stopping = threading.Event()


def _queue() -> WorkQueue:
    queue: WorkQueue = _state["queue"]
    return queue


def enqueue(namespace: str, name: str, priority: int = HIGH) -> None:
    """Queue a reconcile of one model (a follower queues nothing: it stands by)."""
    if _leading.is_set() and not _stopping.is_set() and "queue" in _state:
        _queue().add((namespace, name), priority)


def _kube() -> Kube:
    kube: Kube = _state["kube"]
    return kube


def _caches() -> Caches:
    caches: Caches = _state["caches"]
    return caches


_synced = threading.Event()
SYNC_WAIT = 60.0
"""Seconds the first reconcile waits for every cache's first list."""


RETRY_FIRST, RETRY_MAX = 0.5, 30.0
"""A failed reconcile is tried again after 0.5 s, then 1, 2, 4 ... up to 30 s, until one succeeds."""
_failures: dict[tuple[str, str], int] = {}
UNREACHABLE = (urllib3.exceptions.HTTPError, OSError)
"""The API server could not be reached (refused, reset, timed out): not a bug, one log line, and a retry."""


def reconcile_key(namespace: str, name: str) -> None:
    """Reconcile one ModelDeployment, one reconcile at a time per object; a failure is retried with back-off.

    The body is read afresh under the lock: the copy a watch event carries may predate the status the previous
    reconcile wrote, and reconciling from it would repeat that write and its events.
    """
    key = (namespace, name)
    if not _leading.is_set() or _stopping.is_set():
        return  # a follower (or a replica shutting down) watches and waits; the leader does the work
    if not _synced.is_set():  # the first reconciles wait for the caches' first lists (reads fall back until then)
        if not _caches().wait_synced(SYNC_WAIT):
            log.warning("the caches have not listed everything after %ss; reading from the API server meanwhile",
                        SYNC_WAIT)
        _synced.set()
    try:
        _reconcile(namespace, name)
    except ApiException as exc:  # conflicts, 5xx, throttling
        RECONCILE_ERRORS.labels(kind=f"api_{exc.status}").inc()
        delay = _retry_later(key)
        log.warning("reconcile of %s/%s failed (%s %s: %s); retrying in %.1fs", namespace, name, exc.status,
                    exc.reason, (exc.body or "")[:500], delay)
    except UNREACHABLE as exc:
        RECONCILE_ERRORS.labels(kind="unreachable").inc()
        delay = _retry_later(key)
        log.warning("reconcile of %s/%s could not reach the API server (%s); retrying in %.1fs", namespace, name,
                    str(exc)[:300], delay)
    except Exception as exc:  # a bug: still, the object gets a status that says so, and a retry
        RECONCILE_ERRORS.labels(kind="internal").inc()
        delay = _retry_later(key)
        log.exception("reconcile of %s/%s failed unexpectedly; retrying in %.1fs", namespace, name, delay)
        _report_failure(namespace, name, exc)
    else:
        _failures.pop(key, None)


def _report_failure(namespace: str, name: str, exc: Exception) -> None:
    try:
        body = _kube().get(MODEL_DEPLOYMENTS, namespace, name)
        if body is not None:
            report_invalid_spec(_kube(), body, f"the operator failed on this object: {type(exc).__name__}: {exc}"
                                [:2000], reason=Reason.RECONCILE_FAILED)
    except (ApiException, *UNREACHABLE) as again:
        log.warning("could not report the failure on %s/%s: %s", namespace, name, str(again)[:300])


def _retry_later(key: tuple[str, str]) -> float:
    failures = _failures[key] = _failures.get(key, 0) + 1
    delay: float = min(RETRY_FIRST * 2.0 ** (failures - 1), RETRY_MAX)
    _requeue(*key, delay)
    return delay


def _reconcile(namespace: str, name: str) -> None:
    with _locks[(namespace, name)], RECONCILE_SECONDS.time():
        body = _kube().get(MODEL_DEPLOYMENTS, namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        RECONCILES.inc()
        try:
            md = ModelDeployment.model_validate(body)
        except ValidationError as exc:
            RECONCILE_ERRORS.labels(kind="invalid_spec").inc()
            report_invalid_spec(_kube(), body, f"the spec does not parse: {exc.errors(include_url=False)}"[:2000])
            return
        own: Settings = _state["settings"]
        outcome = reconcile_model_deployment(_kube(), md, converter=own.converter(),
                                             analyst=_state.get("analyst"), drain_seconds=own.drain_seconds,
                                             prometheus_url=own.prometheus_url)
        if outcome.rollout_event:
            ROLLOUT_EVENTS.labels(reason=outcome.rollout_event).inc()
        if outcome.reason is not None:
            MODELS.set(namespace, name, outcome.ready, outcome.reason)
        if outcome.requeue_after is not None:
            _requeue(namespace, name, outcome.requeue_after)


def _requeue(namespace: str, name: str, delay: float) -> None:
    """Reconcile again after `delay` seconds (a rollout's next analysis, a pause's end, a retry): one pending
    time per object, the earliest wins."""
    _queue().add_after((namespace, name), delay)


def _analyst(url: str) -> Analyst:
    prometheus = Prometheus(url)

    def analyse(analysis: Analysis, canary: Backend, stable: Backend, window: str, now: float) -> Measurement:
        return measure(prometheus, analysis, canary, stable, window, now)

    return analyse


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    own = Settings.from_env()
    _state["settings"] = own
    _state["analyst"] = _analyst(own.prometheus_url) if own.prometheus_url else None
    # The watches get a client (and a connection pool) of their own: each holds a connection while it watches.
    namespaces = _state.get("namespaces", [])
    watch_api = load_api_client(own.kubeconfig, pool_size=len(CACHED) * max(len(namespaces), 1) + 2)
    caches = _state["caches"] = Caches(watch_api, namespaces, _EVENT_HANDLERS)
    _state["kube"] = CachedKube(load_api_client(own.kubeconfig), own.field_manager, caches)
    queue = _state["queue"] = WorkQueue(lambda key: reconcile_key(*key), workers=own.workers).start()
    QUEUE_DEPTH.set_function(queue.depth)
    REQUEUES_PENDING.set_function(queue.pending_timers)
    RECONCILES_RUNNING.set_function(queue.running)
    caches.start()  # followers watch too: a new leader starts from warm caches
    if own.leader_election:
        _state["elector"] = LeaderElector(_state["kube"], own.leader_election_namespace, own.leader_election_id,
                                          on_started=_became_leader, on_lost=_lost_leadership).start()
    else:
        _leading.set()
        LEADER.set(1)
    settings.posting.enabled = False  # events are recorded by the reconcile, on condition transitions only
    settings.peering.standalone = True
    settings.scanning.disabled = True  # kopf watches nothing here: no CRD or namespace scanning either
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 8
    from modelyard.metrics import start_metrics_server

    start_metrics_server(own.metrics_port)
    memo["resync"] = asyncio.create_task(_resync_forever(own.resync_seconds))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    """Graceful stop (SIGTERM): start no reconcile, let the running ones finish (each is one pass that a later
    reconcile can resume: level-triggered, nothing half-remembered), then hand the Lease over."""
    task = memo.get("resync")
    if task is not None:
        task.cancel()
    _stopping.set()
    queue: WorkQueue | None = _state.get("queue")
    if queue is not None:
        queue.shutdown()
        if not await asyncio.get_running_loop().run_in_executor(None, queue.wait_idle, SHUTDOWN_WAIT):
            log.warning("stopping with %d reconcile(s) still running: the next leader resumes them", queue.running())
    elector: LeaderElector | None = _state.get("elector")
    if elector is not None:
        await asyncio.get_running_loop().run_in_executor(None, elector.stop)
    caches: Caches | None = _state.get("caches")
    if caches is not None:
        caches.stop()


SHUTDOWN_WAIT = 20.0
"""Seconds a stopping operator waits for running reconciles (within the pod's 30 s termination grace period)."""


def _became_leader() -> None:
    """Leading now: every model gets a reconcile at once (the previous leader may have left work half done)."""
    _leading.set()
    LEADER.set(1)
    threading.Thread(target=_reconcile_all, name="resync-on-leadership", daemon=True).start()


def _reconcile_all() -> None:
    try:
        for namespace, name in _all_models():
            enqueue(namespace, name, LOW)
    except (ApiException, *UNREACHABLE) as exc:
        log.warning("could not list the models on becoming the leader (%s); the resync will", str(exc)[:300])


def _lost_leadership() -> None:
    """Another replica may lead now: stop at once, as controller-runtime does; the pod restarts as a candidate."""
    _leading.clear()
    log.error("lost the leader election: exiting so that this replica restarts as a candidate")
    logging.shutdown()
    os._exit(1)


async def _resync_forever(interval: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        if not _leading.is_set():
            continue
        try:
            for namespace, name in await loop.run_in_executor(None, _all_models):  # behind watch events: low lane
                enqueue(namespace, name, LOW)
        except (ApiException, *UNREACHABLE) as exc:
            log.warning("resync could not list the models (%s); trying again in %ss", str(exc)[:300], interval)
        except Exception:  # the loop must outlive any single failure
            log.exception("resync failed; trying again in %ss", interval)


def watch_namespaces(namespaces: list[str]) -> None:
    """The namespaces given on the command line (none: all): the caches list and watch only these."""
    _state["namespaces"] = list(namespaces)


def _all_models() -> list[tuple[str, str]]:
    """Every model in the watched namespaces: from the cache (a pass over memory), or listed before it has synced."""
    store = _caches().usable(MODEL_DEPLOYMENTS)
    if store is not None:
        return store.keys()
    items = _kube().list_in(MODEL_DEPLOYMENTS, _state.get("namespaces", []))
    return [(item["metadata"]["namespace"], item["metadata"]["name"]) for item in items]


def _model_event(type_: str, body: Obj) -> None:
    meta = body.get("metadata", {})
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    if type_ == "DELETED":
        _locks.pop((namespace, name), None)
        MODELS.forget(namespace, name)
        return  # owner references let the garbage collector remove the children
    enqueue(namespace, name)


def _child_event(type_: str, body: Obj) -> None:
    """A child changed (pods scheduled, replicas ready, a Job done): reconcile its owner."""
    meta = body.get("metadata", {})
    owner = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
    if owner and meta.get("namespace"):
        enqueue(meta["namespace"], owner)


_EVENT_HANDLERS: dict[Resource, EventHandler] = {MODEL_DEPLOYMENTS: _model_event, DEPLOYMENTS: _child_event,
                                                 JOBS: _child_event, PODS: _child_event}
"""Which watches wake a model. The others (Services, routes, autoscalers) only keep their cache: their changes are
the operator's own, or status that the resync picks up, as before the caches."""
