"""kopf entry points for ModelDeployments and the children whose changes should wake their owner.

The operator is level-triggered: every watch event of a ModelDeployment or of one of its children, and a
periodic resync, runs the same reconcile. kopf's change-tracking handlers (on.create/update) are not used: they
store a diff base on the object, and timers add a finalizer; this operator writes nothing on a ModelDeployment
but its status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
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
from modelyard.kube.client import MODEL_DEPLOYMENTS, Kube, load_api_client
from modelyard.kube.leader import LeaderElector
from modelyard.measure.prometheus import Prometheus, measure
from modelyard.measure.promql import Backend
from modelyard.metrics import (
    LEADER,
    MODELS,
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
_timers: dict[tuple[str, str], tuple[float, threading.Timer]] = {}
_timers_lock = threading.Lock()
_leading = threading.Event()
"""Set while this replica may reconcile: always without leader election, while it holds the Lease with it."""
_stopping = threading.Event()
_inflight = threading.Condition()
_running = 0


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
    global _running
    with _inflight:
        if not _leading.is_set() or _stopping.is_set():
            return  # a follower (or a replica shutting down) watches and waits; the leader does the work
        _running += 1
        RECONCILES_RUNNING.set(_running)
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
    finally:
        with _inflight:
            _running -= 1
            RECONCILES_RUNNING.set(_running)
            _inflight.notify_all()


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
    """Reconcile again after `delay` seconds (a rollout's next analysis, a pause's end): one timer per object,
    the earliest wins."""
    key, due = (namespace, name), time.monotonic() + delay
    with _timers_lock:
        pending = _timers.get(key)
        if pending is not None and pending[0] <= due and pending[1].is_alive():
            return
        if pending is not None:
            pending[1].cancel()
        timer = threading.Timer(delay, _fire, args=(namespace, name))
        timer.daemon = True
        _timers[key] = (due, timer)
        REQUEUES_PENDING.set(len(_timers))
        timer.start()


def _fire(namespace: str, name: str) -> None:
    with _timers_lock:
        _timers.pop((namespace, name), None)
        REQUEUES_PENDING.set(len(_timers))
    try:
        reconcile_key(namespace, name)
    except Exception:  # a timer thread has no caller to raise to; the next event or resync tries again
        log.exception("timed reconcile of %s/%s failed", namespace, name)


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
    await asyncio.get_running_loop().run_in_executor(None, _drain, SHUTDOWN_WAIT)
    elector: LeaderElector | None = _state.get("elector")
    if elector is not None:
        await asyncio.get_running_loop().run_in_executor(None, elector.stop)


SHUTDOWN_WAIT = 20.0
"""Seconds a stopping operator waits for running reconciles (within the pod's 30 s termination grace period)."""


def _drain(timeout: float) -> bool:
    with _inflight:
        done = _inflight.wait_for(lambda: _running == 0, timeout=timeout)
    if not done:
        log.warning("stopping with %d reconcile(s) still running: the next leader resumes them", _running)
    return done


def _became_leader() -> None:
    """Leading now: every model gets a reconcile at once (the previous leader may have left work half done)."""
    _leading.set()
    LEADER.set(1)
    threading.Thread(target=_reconcile_all, name="resync-on-leadership", daemon=True).start()


def _reconcile_all() -> None:
    try:
        for meta in (item["metadata"] for item in _list_all()):
            reconcile_key(meta["namespace"], meta["name"])
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
            for meta in (item["metadata"] for item in items):
                await loop.run_in_executor(None, reconcile_key, meta["namespace"], meta["name"])
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
    reconcile_key(body.metadata.namespace or "", body.metadata.name or "")


_CHILD_LABELS: dict[str, Any] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_DEPLOYMENT: kopf.PRESENT}


@kopf.on.event("apps", "v1", "deployments", labels=_CHILD_LABELS)
@kopf.on.event("batch", "v1", "jobs", labels=_CHILD_LABELS)
@kopf.on.event("", "v1", "pods", labels=_CHILD_LABELS)
def child_event(body: kopf.Body, **_: Any) -> None:
    """A child changed (pods scheduled, replicas ready): reconcile its owner."""
    owner = body.metadata.labels.get(LABEL_DEPLOYMENT)
    if owner and body.metadata.namespace:
        reconcile_key(body.metadata.namespace, owner)
