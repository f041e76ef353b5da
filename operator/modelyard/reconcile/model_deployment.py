"""Reconcile one ModelDeployment: observe its children -> render what should be -> apply what differs -> status.

Level-triggered: every call works out the whole desired state from the spec and the objects that exist, so a
missed event or a restart loses nothing, and a call with nothing to change makes no write call at all.

Revisions roll out blue/green: each revision has its own Deployment; the Service keeps selecting the revision
that serves until the new one is available, then switches, and only then is the old Deployment removed. A
revision that never becomes available leaves the serving one alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiException

from modelyard.api.conditions import ConditionType, Reason
from modelyard.api.names import LABEL_REVISION, revision_of, selector_labels, service_name, url_of
from modelyard.api.v1alpha1 import (
    API_VERSION,
    KIND,
    ModelDeployment,
    ModelDeploymentStatus,
    ObjectMeta,
    RevisionsStatus,
    RevisionStatus,
)
from modelyard.kube.apply import ensure
from modelyard.kube.client import DEPLOYMENTS, PODS, SERVICES, Kube, Obj
from modelyard.render.triton import UnservableSource, render_service, render_triton_deployment
from modelyard.status.conditions import Clock, set_condition, transitions, utc_now
from modelyard.status.revision import RevisionState, observe_revision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did, for logs and tests."""

    revision: str
    serving: str | None
    ready: bool
    writes: int


class _Stop(Exception):
    """The reconcile cannot go on; the Ready condition says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _owned_by(obj: Obj, md: ModelDeployment) -> bool:
    refs: list[dict[str, Any]] = obj.get("metadata", {}).get("ownerReferences", [])
    return any(ref.get("uid") == md.metadata.uid for ref in refs)


def _revision_status(state: RevisionState, traffic: int) -> RevisionStatus:
    return RevisionStatus(
        name=state.revision, replicas=state.replicas, ready_replicas=state.ready_replicas, traffic_percent=traffic
    )


class _Writer:
    """Counts the writes of one reconcile (zero on an unchanged resync)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.count = 0

    def ensure(self, live: Obj | None, desired: Obj) -> Obj:
        result = ensure(self.kube, live, desired)
        if result is not live:
            self.count += 1
        return result

    def delete_deployment(self, namespace: str, name: str) -> None:
        self.kube.delete(DEPLOYMENTS, namespace, name)
        self.count += 1


class _NamespaceTerminating(Exception):
    """The namespace is being deleted: its children go with it, and there is nothing to report."""


def _namespace_terminating(exc: ApiException) -> bool:
    return exc.status == 403 and "NamespaceTerminating" in (exc.body or "")


def _apply_rejected(exc: ApiException) -> _Stop:
    return _Stop(Reason.APPLY_REJECTED, f"the API server rejected a child object: {exc.status} {exc.reason}: "
                 f"{(exc.body or '')[:800]}")


def reconcile_model_deployment(kube: Kube, md: ModelDeployment, clock: Clock = utc_now) -> Outcome:
    """Bring one ModelDeployment's children and status in line with its spec."""
    ns = md.metadata.namespace
    revision = revision_of(md.spec)
    writer = _Writer(kube)
    try:
        latest, serving_state = _roll_out(writer, md, revision)
    except _NamespaceTerminating:
        log.debug("namespace %s is terminating; leaving %s alone", ns, md.metadata.name)
        return Outcome(revision, None, False, writer.count)
    except _Stop as stop:
        status = _failed_status(md, revision, stop.reason, stop.message, clock)
        writes = writer.count + _write_status(kube, md.metadata, md.status, status)
        return Outcome(revision, None, False, writes)

    serving = serving_state.revision if serving_state else None
    ready = serving == revision and latest.available
    reason: str
    if ready:
        reason, message = Reason.AVAILABLE, f"revision {revision}: {latest.message}"
    else:
        reason, message = latest.reason, f"revision {revision}: {latest.message}"
        if serving_state and serving != revision:
            message += f"; revision {serving} keeps serving ({serving_state.ready_replicas} ready)"
    conditions = set_condition(
        md.status.conditions, ConditionType.READY, ready, reason, message, md.metadata.generation, clock
    )
    stable = (
        _revision_status(serving_state, 100) if serving_state and serving_state.ready_replicas > 0 else None
    )
    status = ModelDeploymentStatus(
        observed_generation=md.metadata.generation,
        conditions=conditions,
        revisions=RevisionsStatus(
            stable=stable, latest=_revision_status(latest, 100 if serving == revision and stable else 0)
        ),
        replicas=serving_state.replicas if serving_state else latest.replicas,
        ready_replicas=serving_state.ready_replicas if serving_state else 0,
        url=url_of(md),
    )
    writes = writer.count + _write_status(kube, md.metadata, md.status, status)
    log.debug("reconciled %s/%s revision=%s serving=%s writes=%d", ns, md.metadata.name, revision, serving, writes)
    return Outcome(revision, serving, ready, writes)


def _roll_out(writer: _Writer, md: ModelDeployment, revision: str) -> tuple[RevisionState, RevisionState | None]:
    """Apply the latest revision, point the Service at the serving one, prune the rest."""
    kube, ns, replicas = writer.kube, md.metadata.namespace, md.spec.serving.replicas
    try:
        desired = render_triton_deployment(md, revision)
    except UnservableSource as exc:
        raise _Stop(Reason.SOURCE_UNSUPPORTED, str(exc)) from exc

    by_revision = {
        d["metadata"]["labels"][LABEL_REVISION]: d
        for d in kube.list_by_labels(DEPLOYMENTS, ns, selector_labels(md))
        if _owned_by(d, md) and LABEL_REVISION in d["metadata"].get("labels", {})
    }
    service = kube.get(SERVICES, ns, service_name(md))
    if service is not None and not _owned_by(service, md):
        raise _Stop(
            Reason.NAME_CONFLICT,
            f"Service {ns}/{service_name(md)} exists and is not owned by this ModelDeployment; "
            "delete or rename it so the operator can create the model's Service",
        )
    selected = (service or {}).get("spec", {}).get("selector", {}).get(LABEL_REVISION)

    try:
        by_revision[revision] = writer.ensure(by_revision.get(revision), desired)
        pods = kube.list_by_labels(PODS, ns, {**selector_labels(md), LABEL_REVISION: revision})
        latest = observe_revision(revision, by_revision[revision], pods, replicas)

        previous = selected if selected in by_revision and selected != revision else None
        serving = revision if latest.available or previous is None else previous
        writer.ensure(service, render_service(md, serving))
    except ApiException as exc:
        if _namespace_terminating(exc):
            raise _NamespaceTerminating() from exc
        if 400 <= exc.status < 500 and exc.status not in (404, 409, 429):
            raise _apply_rejected(exc) from exc
        raise

    for rev, deployment in by_revision.items():
        if rev not in (revision, serving):
            log.info("pruning revision %s of %s/%s", rev, ns, md.metadata.name)
            writer.delete_deployment(ns, deployment["metadata"]["name"])

    if serving == revision:
        return latest, latest
    old = by_revision[serving]
    old_state = observe_revision(serving, old, [], int(old.get("spec", {}).get("replicas", replicas)))
    return latest, old_state


def _failed_status(
    md: ModelDeployment, revision: str, reason: str, message: str, clock: Clock
) -> ModelDeploymentStatus:
    """Status for a spec the operator cannot act on; whatever serves keeps serving and keeps being reported."""
    conditions = set_condition(
        md.status.conditions, ConditionType.READY, False, reason, message, md.metadata.generation, clock
    )
    return md.status.model_copy(
        update={
            "observed_generation": md.metadata.generation,
            "conditions": conditions,
            "revisions": RevisionsStatus(
                stable=md.status.revisions.stable if md.status.revisions else None,
                latest=RevisionStatus(name=revision, replicas=md.spec.serving.replicas),
            ),
        }
    )


def _write_status(
    kube: Kube, meta: ObjectMeta, current: ModelDeploymentStatus, status: ModelDeploymentStatus
) -> int:
    """Apply the status when it changed, and record an event for each condition that moved. Returns writes."""
    if status == current:
        return 0
    body = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta.name, "namespace": meta.namespace},
        "status": status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    kube.apply_status(body)
    writes = 1
    regarding = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
    }
    for cond in transitions(current.conditions, status.conditions):
        failing = cond.status != "True" and cond.reason != Reason.PROGRESSING
        try:
            kube.event(regarding, type_="Warning" if failing else "Normal", reason=cond.reason,
                       note=f"{cond.type}={cond.status}: {cond.message}")
        except ApiException as exc:  # an event is worth a try, not a failed reconcile
            log.warning("could not record event %s for %s/%s: %s %s", cond.reason, meta.namespace, meta.name,
                        exc.status, (exc.body or "")[:300])
        writes += 1
    return writes


def report_invalid_spec(kube: Kube, body: Obj, message: str, clock: Clock = utc_now) -> int:
    """A body that passed the CRD schema but not the models: say so on the Ready condition."""
    meta = body.get("metadata", {})
    try:
        current = ModelDeploymentStatus.model_validate(body.get("status") or {})
    except ValueError:
        current = ModelDeploymentStatus()
    conditions = set_condition(
        current.conditions, ConditionType.READY, False, Reason.INVALID_SPEC, message, meta.get("generation"), clock
    )
    status = current.model_copy(update={"observed_generation": meta.get("generation"), "conditions": conditions})
    if status == current:
        return 0
    return _write_status(kube, ObjectMeta.model_validate(meta), current, status)
