"""Reconcile one ModelDeployment: observe its children -> render what should be -> apply what differs -> status.

Level-triggered: every call works out the whole desired state from the spec and the objects that exist, so a
missed event or a restart loses nothing, and a call with nothing to change makes no write call at all.

Revisions roll out blue/green: each revision has its own Deployment; the Service keeps selecting the revision
that serves until the new one is available, then switches, and only then is the old Deployment removed. A
revision that never becomes available leaves the serving one alone.

With spec.conversion, a revision first gets a conversion Job; its Deployment is created only once the Job's
result (the termination message) says the converted model passed validation. The result is recorded in
status.revisions (modelRepository), so it is read from the Job once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiException

from modelyard.api.conditions import Condition, ConditionType, Reason
from modelyard.api.names import (
    COMPONENT_CONVERTER,
    COMPONENT_SERVER,
    LABEL_COMPONENT,
    LABEL_REVISION,
    revision_of,
    selector_labels,
    server_selector,
    service_name,
    url_of,
)
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
from modelyard.kube.client import DEPLOYMENTS, JOBS, PODS, SERVICES, Kube, Obj, Resource
from modelyard.render.conversion import render_conversion_job
from modelyard.render.triton import UnservableSource, render_service, render_triton_deployment
from modelyard.settings import DEFAULT_CONVERTER_IMAGE
from modelyard.status.conditions import Clock, set_condition, transitions, utc_now
from modelyard.status.conversion import ConversionState, describe_artifact, describe_validation, observe_conversion
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


def _revision_status(state: RevisionState, traffic: int, repository: str | None = None) -> RevisionStatus:
    return RevisionStatus(
        name=state.revision, replicas=state.replicas, ready_replicas=state.ready_replicas, traffic_percent=traffic,
        model_repository=repository,
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

    def delete(self, res: Resource, namespace: str, name: str) -> None:
        self.kube.delete(res, namespace, name)
        self.count += 1


class _NamespaceTerminating(Exception):
    """The namespace is being deleted: its children go with it, and there is nothing to report."""


def _namespace_terminating(exc: ApiException) -> bool:
    return exc.status == 403 and "NamespaceTerminating" in (exc.body or "")


def _apply_rejected(exc: ApiException) -> _Stop:
    return _Stop(Reason.APPLY_REJECTED, f"the API server rejected a child object: {exc.status} {exc.reason}: "
                 f"{(exc.body or '')[:800]}")


def reconcile_model_deployment(
    kube: Kube, md: ModelDeployment, clock: Clock = utc_now, converter_image: str = DEFAULT_CONVERTER_IMAGE
) -> Outcome:
    """Bring one ModelDeployment's children and status in line with its spec."""
    ns = md.metadata.namespace
    revision = revision_of(md.spec)
    writer = _Writer(kube)
    try:
        rolled = _roll_out(writer, md, revision, converter_image)
    except _NamespaceTerminating:
        log.debug("namespace %s is terminating; leaving %s alone", ns, md.metadata.name)
        return Outcome(revision, None, False, writer.count)
    except _Stop as stop:
        status = _failed_status(md, revision, stop.reason, stop.message, clock)
        writes = writer.count + _write_status(kube, md.metadata, md.status, status)
        return Outcome(revision, None, False, writes)

    latest, serving_state = rolled.latest, rolled.serving
    serving = serving_state.revision if serving_state else None
    ready = serving == revision and latest.available
    reason: str
    if ready:
        reason, message = Reason.AVAILABLE, f"revision {revision}: {latest.message}"
    else:
        reason, message = latest.reason, f"revision {revision}: {latest.message}"
        if serving_state and serving != revision:
            message += f"; revision {serving} keeps serving ({serving_state.ready_replicas} ready)"
    gen = md.metadata.generation
    conditions = set_condition(md.status.conditions, ConditionType.READY, ready, reason, message, gen, clock)
    if rolled.conversion is not None:
        conditions = _conversion_conditions(conditions, rolled.conversion, revision, gen, clock)
    else:  # the conversion section was removed: its conditions no longer describe anything
        conditions = [c for c in conditions if c.type not in _CONVERSION_CONDITIONS]
    stable = (
        _revision_status(serving_state, 100, rolled.repositories.get(serving_state.revision))
        if serving_state and serving_state.ready_replicas > 0 else None
    )
    status = ModelDeploymentStatus(
        observed_generation=gen,
        conditions=conditions,
        revisions=RevisionsStatus(
            stable=stable,
            latest=_revision_status(latest, 100 if serving == revision and stable else 0,
                                    rolled.repositories.get(revision)),
        ),
        replicas=serving_state.replicas if serving_state else latest.replicas,
        ready_replicas=serving_state.ready_replicas if serving_state else 0,
        url=url_of(md),
    )
    writes = writer.count + _write_status(kube, md.metadata, md.status, status)
    log.debug("reconciled %s/%s revision=%s serving=%s writes=%d", ns, md.metadata.name, revision, serving, writes)
    return Outcome(revision, serving, ready, writes)


def _conversion_conditions(
    conditions: list[Condition], conv: ConversionState, revision: str, gen: int | None, clock: Clock
) -> list[Condition]:
    """Converted and Validated for the latest revision. A result recorded earlier keeps its conditions."""
    def put(conds: list[Condition], type_: str, status: bool | str, reason: str, message: str) -> list[Condition]:
        return set_condition(conds, type_, status, reason, f"revision {revision}: {message}", gen, clock)

    if conv.done and conv.result is None:
        return conditions
    if conv.done and conv.result is not None:
        conditions = put(conditions, ConditionType.CONVERTED, True, Reason.CONVERTED, describe_artifact(conv.result))
        return put(conditions, ConditionType.VALIDATED, True, Reason.VALIDATED, describe_validation(conv.result))
    if not conv.failed:
        conditions = put(conditions, ConditionType.CONVERTED, "Unknown", Reason.CONVERTING, conv.message)
        return put(conditions, ConditionType.VALIDATED, "Unknown", Reason.CONVERTING, "waiting for the conversion")
    if conv.reason == Reason.VALIDATION_FAILED:
        conditions = put(conditions, ConditionType.CONVERTED, True, Reason.CONVERTED, "converted; not served")
        return put(conditions, ConditionType.VALIDATED, False, conv.reason, conv.message)
    conditions = put(conditions, ConditionType.CONVERTED, False, conv.reason, conv.message)
    return put(conditions, ConditionType.VALIDATED, False, conv.reason, "nothing to validate: the conversion failed")


_CONVERSION_CONDITIONS = (ConditionType.CONVERTED, ConditionType.VALIDATED)


@dataclass(frozen=True)
class _RollOut:
    latest: RevisionState
    serving: RevisionState | None
    conversion: ConversionState | None
    repositories: dict[str, str]
    """Converted model repository (pvc://claim/path/key) by revision, where known."""


def _owned_children(kube: Kube, res: Resource, md: ModelDeployment, component: str) -> dict[str, Obj]:
    return {
        o["metadata"]["labels"][LABEL_REVISION]: o
        for o in kube.list_by_labels(res, md.metadata.namespace, {**selector_labels(md), LABEL_COMPONENT: component})
        if _owned_by(o, md) and LABEL_REVISION in o["metadata"].get("labels", {})
    }


def _recorded_repositories(md: ModelDeployment) -> dict[str, str]:
    revs = md.status.revisions
    out = {}
    for r in (revs.stable, revs.latest) if revs else ():
        if r is not None and r.model_repository:
            out[r.name] = r.model_repository
    return out


def _convert(writer: _Writer, md: ModelDeployment, revision: str, image: str,
             repositories: dict[str, str]) -> ConversionState:
    """Run (or read) the latest revision's conversion Job."""
    conv = md.spec.conversion
    assert conv is not None and conv.store
    if revision in repositories:
        key = repositories[revision].rsplit("/", 1)[-1]
        return ConversionState(True, False, Reason.CONVERTED, "", key=key)
    kube, ns = writer.kube, md.metadata.namespace
    job = _owned_children(kube, JOBS, md, COMPONENT_CONVERTER).get(revision)
    if job is None:
        # A Job's pod template is immutable and the Job is a record of one run: it is created, never re-applied.
        job = writer.ensure(None, render_conversion_job(md, revision, image))
    pods = kube.list_by_labels(PODS, ns, {"batch.kubernetes.io/job-name": job["metadata"]["name"]})
    state = observe_conversion(job, pods)
    if state.done and state.key:
        repositories[revision] = f"{conv.store.rstrip('/')}/{state.key}"
    return state


def _roll_out(writer: _Writer, md: ModelDeployment, revision: str, converter_image: str) -> _RollOut:
    """Convert if asked, apply the latest revision, point the Service at the serving one, prune the rest."""
    kube, ns, replicas = writer.kube, md.metadata.namespace, md.spec.serving.replicas
    by_revision = _owned_children(kube, DEPLOYMENTS, md, COMPONENT_SERVER)
    service = kube.get(SERVICES, ns, service_name(md))
    if service is not None and not _owned_by(service, md):
        raise _Stop(
            Reason.NAME_CONFLICT,
            f"Service {ns}/{service_name(md)} exists and is not owned by this ModelDeployment; "
            "delete or rename it so the operator can create the model's Service",
        )
    selected = (service or {}).get("spec", {}).get("selector", {}).get(LABEL_REVISION)
    repositories = _recorded_repositories(md)
    conversion: ConversionState | None = None

    try:
        if md.spec.conversion is not None:
            conversion = _convert(writer, md, revision, converter_image, repositories)
        if conversion is not None and not conversion.done:
            latest = RevisionState(revision, replicas, 0, False, conversion.reason, conversion.message)
        else:
            try:
                desired = render_triton_deployment(md, revision, conversion.key if conversion else None)
            except UnservableSource as exc:
                raise _Stop(Reason.SOURCE_UNSUPPORTED, str(exc)) from exc
            by_revision[revision] = writer.ensure(by_revision.get(revision), desired)
            pods = kube.list_by_labels(PODS, ns, server_selector(md, revision))
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

    keep = (revision, serving)
    for rev, deployment in by_revision.items():
        if rev not in keep:
            log.info("pruning revision %s of %s/%s", rev, ns, md.metadata.name)
            writer.delete(DEPLOYMENTS, ns, deployment["metadata"]["name"])
    # Jobs exist only where conversion ran (a conversion section, its conditions, or a revision that serves a
    # converted repository): a model that never converted is not asked for Jobs on every resync.
    converted_before = bool(repositories) or any(c.type in _CONVERSION_CONDITIONS for c in md.status.conditions)
    if md.spec.conversion is not None or converted_before:
        for rev, job in _owned_children(kube, JOBS, md, COMPONENT_CONVERTER).items():
            if rev not in keep:
                writer.delete(JOBS, ns, job["metadata"]["name"])

    if serving == revision:
        return _RollOut(latest, latest if revision in by_revision else None, conversion, repositories)
    old = by_revision[serving]
    old_state = observe_revision(serving, old, [], int(old.get("spec", {}).get("replicas", replicas)))
    return _RollOut(latest, old_state, conversion, repositories)


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
        failing = cond.status == "False" and cond.reason not in (Reason.PROGRESSING, Reason.CONVERTING)
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
