"""kopf entry points for ModelDeployments and the children whose changes should wake their owner.

The operator is level-triggered: every watch event of a ModelDeployment or of one of its children, and a
periodic resync, queues the same reconcile of the model (handlers/workqueue.py: a key at most once, events before
the resync's pass, a fixed number of workers, timed requeues and retries with back-off). kopf's change-tracking
handlers (on.create/update) are not used: they store a diff base on the object, and timers add a finalizer; this
operator writes nothing on a ModelDeployment but its status.
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
from modelyard.api.names import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY
from modelyard.api.v1alpha1 import GROUP, PLURAL, VERSION, ModelDeployment
from modelyard.api.v1alpha1.rollout import Analysis, Measurement
from modelyard.handlers.workqueue import HIGH, LOW, WorkQueue
from modelyard.kube.client import MODEL_DEPLOYMENTS, Kube, load_api_client
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
        outcome = reconcile_model_deployment(_kube(), md, converter_image=own.converter_image,
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
    _state["kube"] = Kube(load_api_client(own.kubeconfig), own.field_manager)
    queue = _state["queue"] = WorkQueue(lambda key: reconcile_key(*key), workers=own.workers).start()
    QUEUE_DEPTH.set_function(queue.depth)
    REQUEUES_PENDING.set_function(queue.pending_timers)
    RECONCILES_RUNNING.set_function(queue.running)
    if own.leader_election:
        _state["elector"] = LeaderElector(_state["kube"], own.leader_election_namespace, own.leader_election_id,
                                          on_started=_became_leader, on_lost=_lost_leadership).start()
    else:
        _leading.set()
        LEADER.set(1)
    settings.posting.enabled = False  # events are recorded by the reconcile, on condition transitions only
    settings.peering.standalone = True
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


SHUTDOWN_WAIT = 20.0
"""Seconds a stopping operator waits for running reconciles (within the pod's 30 s termination grace period)."""


def _became_leader() -> None:
    """Leading now: every model gets a reconcile at once (the previous leader may have left work half done)."""
    _leading.set()
    LEADER.set(1)
    threading.Thread(target=_reconcile_all, name="resync-on-leadership", daemon=True).start()


def _reconcile_all() -> None:
    try:
        for meta in (item["metadata"] for item in _list_all()):
            enqueue(meta["namespace"], meta["name"], LOW)
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
            items = await loop.run_in_executor(None, _list_all)
            for meta in (item["metadata"] for item in items):  # behind any watch event: the low lane
                enqueue(meta["namespace"], meta["name"], LOW)
        except (ApiException, *UNREACHABLE) as exc:
            log.warning("resync could not list the models (%s); trying again in %ss", str(exc)[:300], interval)
        except Exception:  # the loop must outlive any single failure
            log.exception("resync failed; trying again in %ss", interval)


def watch_namespaces(namespaces: list[str]) -> None:
    """The namespaces given on the command line (none: all). The resync lists only these, as kopf watches only them."""
    _state["namespaces"] = list(namespaces)


def _list_all() -> list[dict[str, Any]]:
    return _kube().list_in(MODEL_DEPLOYMENTS, _state.get("namespaces", []))


@kopf.on.event(GROUP, VERSION, PLURAL)
def model_deployment_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    if type == "DELETED":
        _locks.pop((body.metadata.namespace or "", body.metadata.name or ""), None)
        MODELS.forget(body.metadata.namespace or "", body.metadata.name or "")
        return  # owner references let the garbage collector remove the children
    enqueue(body.metadata.namespace or "", body.metadata.name or "")


_CHILD_LABELS: dict[str, Any] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_DEPLOYMENT: kopf.PRESENT}


@kopf.on.event("apps", "v1", "deployments", labels=_CHILD_LABELS)
@kopf.on.event("batch", "v1", "jobs", labels=_CHILD_LABELS)
@kopf.on.event("", "v1", "pods", labels=_CHILD_LABELS)
def child_event(body: kopf.Body, **_: Any) -> None:
    """A child changed (pods scheduled, replicas ready): reconcile its owner."""
    owner = body.metadata.labels.get(LABEL_DEPLOYMENT)
    if owner and body.metadata.namespace:
        enqueue(body.metadata.namespace, owner)
