"""Reconcile one ModelDeployment: observe its children -> render what should be -> apply what differs -> status.

Level-triggered: every call works out the whole desired state from the spec and the objects that exist, so a
missed event or a restart loses nothing, and a call with nothing to change makes no write call at all.

Revisions roll out blue/green by default: each revision has its own Deployment; the Service keeps selecting the
revision that serves until the new one is available, then switches, and only then is the old Deployment removed.
A revision that never becomes available leaves the serving one alone. With spec.rollout.strategy canary (and
spec.traffic), a new revision gets a share of the gateway's requests in steps, measured at each
(modelyard.reconcile.rollout decides, status.rollout remembers); the Service switches on promotion, and the old
revision stays behind the route at weight 0 for the drain period before it is removed.

With spec.conversion, a revision first gets a conversion Job; its Deployment is created only once the Job's
result (the termination message) says the converted model passed validation. The result is recorded in
status.revisions (modelRepository), so it is read from the Job once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kubernetes.client import ApiException

from modelyard.api.conditions import Condition, ConditionType, Reason
from modelyard.api.names import (
    COMPONENT_CONVERTER,
    COMPONENT_SERVER,
    LABEL_REVISION,
    revision_of,
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
    RetiredRevision,
    RevisionsStatus,
    RevisionStatus,
)
from modelyard.api.v1alpha1.rollout import RolloutStatus
from modelyard.api.v1alpha1.scaling import ScalingStatus
from modelyard.codepolicy import module_refusal, named_code
from modelyard.kube.client import DEPLOYMENTS, JOBS, PODS, SERVICES, Kube, Obj
from modelyard.reconcile.common import Stop, Writer, owned_by, owned_children
from modelyard.reconcile.rollout import Analyst, observe_canary
from modelyard.reconcile.scaling import apply_revision, canary_replicas, current_replicas, reconcile_scaling
from modelyard.reconcile.secrets import check_secrets
from modelyard.reconcile.traffic import reconcile_traffic
from modelyard.render.conversion import Converter, render_conversion_job
from modelyard.render.triton import UnservableSource, render_service, render_triton_deployment
from modelyard.rollout.canary import PROMOTED, ROLLED_BACK, Decision, wake_after
from modelyard.settings import DEFAULT_CONVERTER
from modelyard.status.conditions import Clock, set_condition, transitions, utc_now
from modelyard.status.conversion import ConversionState, describe_artifact, describe_validation, observe_conversion
from modelyard.status.kstatus import kstatus_conditions
from modelyard.status.revision import RevisionState, observe_revision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did, for logs and tests."""

    revision: str
    serving: str | None
    ready: bool
    writes: int
    requeue_after: float | None = None
    """Seconds until the rollout has something to do without any event (an analysis, a pause's end, a drain)."""
    rollout_event: str | None = None
    """The reason of the rollout event this reconcile recorded, if any (for the operator's metrics)."""
    reason: str | None = None
    """The Ready condition's reason now (for the operator's metrics); None when nothing was decided."""


def _revision_status(state: RevisionState, traffic: int, repository: str | None = None) -> RevisionStatus:
    return RevisionStatus(
        name=state.revision, replicas=state.replicas, ready_replicas=state.ready_replicas, traffic_percent=traffic,
        model_repository=repository,
    )


class _NamespaceTerminating(Exception):
    """The namespace is being deleted: its children go with it, and there is nothing to report."""


def _namespace_terminating(exc: ApiException) -> bool:
    return exc.status == 403 and "NamespaceTerminating" in (exc.body or "")


_PERMANENT_500 = ("failed to create typed patch object", "cannot unmarshal", "field not declared in schema")
"""A 500 with one of these is server-side apply refusing the object's shape: retrying cannot heal it."""


def _refused(exc: ApiException) -> bool:
    """The API server refused a child for what it is (retrying will not help), not for a passing condition."""
    if 400 <= exc.status < 500:
        return exc.status not in (404, 409, 429)
    return exc.status == 500 and any(text in (exc.body or "") for text in _PERMANENT_500)


def _apply_rejected(exc: ApiException) -> Stop:
    return Stop(Reason.APPLY_REJECTED, f"the API server rejected a child object: {exc.status} {exc.reason}: "
                 f"{(exc.body or '')[:800]}")


@dataclass(frozen=True)
class _Context:
    clock: Clock
    converter: Converter
    analyst: Analyst | None
    drain_seconds: float
    prometheus_url: str | None


def reconcile_model_deployment(
    kube: Kube, md: ModelDeployment, clock: Clock = utc_now, converter: Converter = DEFAULT_CONVERTER,
    analyst: Analyst | None = None, drain_seconds: float = 30.0, prometheus_url: str | None = None,
) -> Outcome:
    """Bring one ModelDeployment's children and status in line with its spec.

    `analyst` measures a canary (Prometheus); `drain_seconds` is how long a promoted canary's predecessor stays
    behind the route at weight 0 before it is removed; `prometheus_url` is what a KEDA autoscaler reads."""
    ns = md.metadata.namespace
    revision = revision_of(md.spec)
    writer = Writer(kube)
    ctx = _Context(clock, converter, analyst, drain_seconds, prometheus_url)
    try:
        rolled = _roll_out(writer, md, revision, ctx)
    except _NamespaceTerminating:
        log.debug("namespace %s is terminating; leaving %s alone", ns, md.metadata.name)
        return Outcome(revision, None, False, writer.count)
    except Stop as stop:
        status = _failed_status(md, revision, stop.reason, stop.message, clock)
        writes = writer.count + _write_status(kube, md.metadata, md.status, status, clock)
        return Outcome(revision, None, False, writes, reason=stop.reason)

    latest, serving_state = rolled.latest, rolled.serving
    serving = serving_state.revision if serving_state else None
    decision = rolled.decision
    canary_on = decision is not None and decision.status.phase != "Promoted"
    reason: str
    if canary_on and serving_state is not None:
        # The stable revision serves (the canary gets its share through the gateway): Ready is about it.
        assert decision is not None
        ready = serving_state.available
        reason = Reason.AVAILABLE if ready else serving_state.reason
        message = (f"revision {serving}: {serving_state.message}; canary revision {revision} "
                   f"{decision.status.phase.lower()}: {decision.status.message}")
    else:
        ready = serving == revision and latest.available
        if ready and rolled.scaling is not None and rolled.scaling.scaled_to_zero:
            reason, message = Reason.SCALED_TO_ZERO, _zero_message(md, revision, rolled.scaling)
        elif ready:
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
    conditions = _progressing_condition(conditions, md, rolled, revision, serving, gen, clock)
    weights = rolled.weights
    stable = (
        _revision_status(serving_state, weights.get(serving_state.revision, 0),
                         rolled.repositories.get(serving_state.revision))
        if serving_state and (serving_state.ready_replicas > 0 or serving_state.replicas == 0) else None
    )
    latest_traffic = weights.get(revision, 0) if (serving == revision and stable) or canary_on else 0
    status = ModelDeploymentStatus(
        observed_generation=gen,
        conditions=conditions,
        revisions=RevisionsStatus(
            stable=stable,
            latest=_revision_status(latest, latest_traffic, rolled.repositories.get(revision)),
            retired=rolled.retired,
        ),
        replicas=serving_state.replicas if serving_state else latest.replicas,
        ready_replicas=serving_state.ready_replicas if serving_state else 0,
        url=url_of(md),
        http_route=rolled.http_route,
        rollout=rolled.rollout,
        scaling=rolled.scaling,
    )
    writes = writer.count + _write_status(kube, md.metadata, md.status, status, clock)
    event = decision.reason if decision is not None and decision.event else None
    if decision is not None and decision.event:
        writes += _rollout_event(kube, md.metadata, decision)
    writes += _cold_start_event(kube, md, rolled.scaling)
    now = clock().timestamp()
    requeue = wake_after(rolled.rollout, md.spec.rollout, now, ctx.drain_seconds) if (
        md.spec.rollout is not None) else None
    if rolled.retired is not None:  # wake when the retired revision's drain ends, to remove it
        drained = max(rolled.retired.since + ctx.drain_seconds - now, 0.5)
        requeue = drained if requeue is None else min(requeue, drained)
    log.debug("reconciled %s/%s revision=%s serving=%s writes=%d", ns, md.metadata.name, revision, serving, writes)
    return Outcome(revision, serving, ready, writes, requeue, event, reason)


def _progressing_condition(conditions: list[Condition], md: ModelDeployment, rolled: _RollOut, revision: str,
                           serving: str | None, gen: int | None, clock: Clock) -> list[Condition]:
    """With a canary strategy: where the rollout stands. Without one the condition does not exist."""
    if not rolled.canary_mode:
        return [c for c in conditions if c.type != ConditionType.PROGRESSING]
    decision, note = rolled.decision, f"; {rolled.note}" if rolled.note else ""
    if decision is not None:
        state = decision.status
        return set_condition(conditions, ConditionType.PROGRESSING, decision.reason != ROLLED_BACK, decision.reason,
                             f"revision {state.canary}: {state.message}{note}", gen, clock)
    if rolled.rollout is not None:  # promoted; its predecessor drains
        return set_condition(conditions, ConditionType.PROGRESSING, True, PROMOTED,
                             f"revision {revision}: {rolled.rollout.message}", gen, clock)
    if serving == revision:
        return set_condition(conditions, ConditionType.PROGRESSING, True, Reason.ROLLOUT_COMPLETE,
                             f"revision {revision} serves all traffic", gen, clock)
    return set_condition(conditions, ConditionType.PROGRESSING, True, Reason.PROGRESSING,
                         f"revision {revision}: the first revision rolls out without a canary (nothing serves yet)",
                         gen, clock)


def _rollout_event(kube: Kube, meta: ObjectMeta, decision: Decision) -> int:
    return _event(kube, meta, "Warning" if decision.warning else "Normal", decision.reason, decision.event or "",
                  "Rollout")


def _event(kube: Kube, meta: ObjectMeta, type_: str, reason: str, note: str, action: str) -> int:
    regarding = {"apiVersion": API_VERSION, "kind": KIND,
                 "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid}}
    try:
        kube.event(regarding, type_=type_, reason=reason, note=note, action=action)
    except ApiException as exc:  # an event is worth a try, not a failed reconcile
        log.warning("could not record event %s for %s/%s: %s", reason, meta.namespace, meta.name, exc.status)
        return 0
    return 1


def _zero_message(md: ModelDeployment, revision: str, scaling: ScalingStatus) -> str:
    assert md.spec.scaling is not None
    last = (f"; the last cold start took {scaling.last_cold_start_seconds:g}s"
            if scaling.last_cold_start_seconds is not None else "")
    return (f"revision {revision} is scaled to zero after {md.spec.scaling.idle_period} without requests; a request "
            f"through the gateway wakes it, and gets 503 until its first pod is ready{last}")


def _cold_start_event(kube: Kube, md: ModelDeployment, scaling: ScalingStatus | None) -> int:
    """One event each time the serving revision comes back from zero, with how long its first pod took."""
    before = md.status.scaling
    if (scaling is None or scaling.last_cold_start_seconds is None or before is None or before.woke_at is None
            or scaling.woke_at is not None):
        return 0
    return _event(kube, md.metadata, "Normal", Reason.SCALED_FROM_ZERO,
                  f"revision {scaling.target} left zero: its first pod was ready {scaling.last_cold_start_seconds:g}s "
                  "after the autoscaler woke it", "Scale")


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
    if not conv.failed:  # converting, or its pod is not running yet (Unschedulable, ImagePullBackOff, ...)
        conditions = put(conditions, ConditionType.CONVERTED, "Unknown", conv.reason, conv.message)
        return put(conditions, ConditionType.VALIDATED, "Unknown", Reason.CONVERTING, "waiting for the conversion")
    if conv.reason in (Reason.VALIDATION_FAILED, Reason.VALIDATION_INCONCLUSIVE):
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
    weights: dict[str, int]
    """Each routed revision's share of the gateway's requests (blue/green: the serving one, 100)."""
    canary_mode: bool = False
    decision: Decision | None = None
    """The canary's decision, while a canary rolls out (or ended rolled back) beside a stable revision."""
    note: str = ""
    rollout: RolloutStatus | None = None
    http_route: str | None = None
    scaling: ScalingStatus | None = None
    retired: RetiredRevision | None = None



def _recorded_repositories(md: ModelDeployment) -> dict[str, str]:
    revs = md.status.revisions
    out = {}
    for r in (revs.stable, revs.latest) if revs else ():
        if r is not None and r.model_repository:
            out[r.name] = r.model_repository
    return out


def _convert(writer: Writer, md: ModelDeployment, revision: str, converter: Converter,
             repositories: dict[str, str]) -> ConversionState:
    """Run (or read) the latest revision's conversion Job."""
    conv = md.spec.conversion
    assert conv is not None and conv.store
    if revision in repositories:
        key = repositories[revision].rsplit("/", 1)[-1]
        return ConversionState(True, False, Reason.CONVERTED, "", key=key)
    kube, ns = writer.kube, md.metadata.namespace
    job = owned_children(kube, JOBS, md, COMPONENT_CONVERTER).get(revision)
    if job is None:
        # A Job's pod template is immutable and the Job is a record of one run: it is created, never re-applied.
        # The code the spec names is checked before any Job: a condition with the reason, no pod.
        for field, name in named_code(conv.model_class, conv.keras_custom_objects):
            refusal = module_refusal(field, name, converter.allowed_modules)
            if refusal:
                raise Stop(Reason.MODULE_NOT_ALLOWED, refusal)
        job = writer.ensure(None, render_conversion_job(md, revision, converter))
    pods = kube.list_by_labels(PODS, ns, {"batch.kubernetes.io/job-name": job["metadata"]["name"]})
    state = observe_conversion(job, pods)
    if state.done and state.key:
        repositories[revision] = f"{conv.store.rstrip('/')}/{state.key}"
    return state


def _scaled(deployment: Obj, replicas: int) -> Obj:
    return {**deployment, "spec": {**deployment["spec"], "replicas": replicas}}


def _roll_out(writer: Writer, md: ModelDeployment, revision: str, ctx: _Context) -> _RollOut:
    """Convert if asked, apply the latest revision, route traffic, point the Service at the serving one, prune."""
    kube, ns, scaling = writer.kube, md.metadata.namespace, md.spec.scaling
    replicas = md.spec.fixed_replicas if scaling is None else max(scaling.min_replicas, 1)
    now = ctx.clock().timestamp()
    by_revision = owned_children(kube, DEPLOYMENTS, md, COMPONENT_SERVER)
    service = kube.get(SERVICES, ns, service_name(md))
    if service is not None and not owned_by(service, md):
        raise Stop(
            Reason.NAME_CONFLICT,
            f"Service {ns}/{service_name(md)} exists and is not owned by this ModelDeployment; "
            "delete or rename it so the operator can create the model's Service",
        )
    selected = (service or {}).get("spec", {}).get("selector", {}).get(LABEL_REVISION)
    check_secrets(kube, md)
    repositories = _recorded_repositories(md)
    conversion: ConversionState | None = None
    canary_mode = md.spec.rollout is not None and md.spec.rollout.strategy == "canary" and md.spec.traffic is not None
    prior = md.status.rollout
    rolled_back = (canary_mode and prior is not None and prior.canary == revision and prior.phase == "RolledBack")
    # A rolled-back canary drains as a replaced revision does: weight 0 at once (the decision), its pods go after
    # the drain period, so that requests the gateway had already sent it finish instead of failing at the gateway.
    drained_back = rolled_back and (prior is None or prior.finished_at is None
                                    or now >= prior.finished_at + ctx.drain_seconds)
    decision: Decision | None = None
    note = ""
    rollout: RolloutStatus | None = None
    retired: RetiredRevision | None = None
    canary_count: int | None = None  # with autoscaling, during a canary: its share of the model's replicas

    try:
        desired: Obj | None = None
        if md.spec.conversion is not None:
            conversion = _convert(writer, md, revision, ctx.converter, repositories)
        if conversion is not None and not conversion.done:
            latest = RevisionState(revision, replicas, 0, False, conversion.reason, conversion.message)
        else:
            try:
                desired = render_triton_deployment(md, revision, conversion.key if conversion else None,
                                                   ctx.converter.image)
            except UnservableSource as exc:
                raise Stop(Reason.SOURCE_UNSUPPORTED, str(exc)) from exc
            if drained_back:  # a rolled-back canary stays scaled down until the spec changes
                desired = _scaled(desired, 0)
            stable_deployment = by_revision.get(selected or "") if selected != revision else None
            start = (canary_replicas(md, stable_deployment, prior if prior and prior.canary == revision else None, 0)
                     if canary_mode and scaling is not None and stable_deployment is not None else None)
            by_revision[revision] = apply_revision(writer, md, by_revision.get(revision), desired,
                                                   by_revision.get(selected or ""), rolled_back, start)
            pods = kube.list_by_labels(PODS, ns, server_selector(md, revision))
            latest = observe_revision(revision, by_revision[revision], pods, 0 if drained_back else replicas)

        previous = selected if selected in by_revision and selected != revision else None
        if canary_mode and previous is not None:
            view = observe_canary(md, latest, previous, now, ctx.analyst,
                                  current_replicas(by_revision[previous]) if scaling is not None else None)
            decision, note, rollout = view.decision, view.note, view.decision.status
            if scaling is not None and rollout.phase in ("Progressing", "Paused"):
                canary_count = canary_replicas(md, by_revision[previous], rollout, decision.weight)
            serving = revision if rollout.phase == "Promoted" else previous
            weights = {previous: 100 - decision.weight, revision: decision.weight}
        else:
            serving = revision if latest.available or previous is None else previous
            weights = {serving: 100}
            if serving != revision and revision in by_revision:
                # Behind the route at weight 0 while it rolls out: the gateway knows its backend (Service and
                # endpoints) before the switch sends it every request, instead of learning it after (500/503).
                weights[revision] = 0
            retired = _retired(md, previous, serving, revision, by_revision, now, ctx.drain_seconds)
            if retired is not None:  # the revision that served before the switch drains at weight 0
                weights[retired.name] = 0
            if (canary_mode and prior is not None and prior.phase == "Promoted" and prior.canary == revision == serving
                    and prior.stable in by_revision and prior.finished_at is not None
                    and now < prior.finished_at + ctx.drain_seconds):
                # The promoted canary's predecessor drains: behind the route at weight 0, then removed.
                weights[prior.stable] = 0
                rollout = prior
        scaled_down = rolled_back or (rollout is not None and rollout.phase == "RolledBack")
        scaling_status = reconcile_scaling(writer, md, by_revision, revision, serving, latest.available, scaled_down,
                                           ctx.prometheus_url, now, canary_count)
        http_route = reconcile_traffic(writer, md, weights)
        writer.ensure(service, render_service(md, serving))
    except ApiException as exc:
        if _namespace_terminating(exc):
            raise _NamespaceTerminating() from exc
        if _refused(exc):
            raise _apply_rejected(exc) from exc
        raise

    keep = {revision, serving, *weights}
    for rev, deployment in by_revision.items():
        if rev not in keep:
            log.info("pruning revision %s of %s/%s", rev, ns, md.metadata.name)
            writer.delete(DEPLOYMENTS, ns, deployment["metadata"]["name"])
    # Jobs exist only where conversion ran (a conversion section, its conditions, or a revision that serves a
    # converted repository): a model that never converted is not asked for Jobs on every resync.
    converted_before = bool(repositories) or any(c.type in _CONVERSION_CONDITIONS for c in md.status.conditions)
    if md.spec.conversion is not None or converted_before:
        for rev, job in owned_children(kube, JOBS, md, COMPONENT_CONVERTER).items():
            if rev not in keep:
                writer.delete(JOBS, ns, job["metadata"]["name"])

    if serving == revision:
        serving_state = latest if revision in by_revision else None
    else:
        old = by_revision[serving]
        serving_state = observe_revision(serving, old, [], int(old.get("spec", {}).get("replicas", replicas)))
    return _RollOut(latest, serving_state, conversion, repositories, weights, canary_mode, decision, note, rollout,
                    http_route, scaling_status, retired)


def _retired(md: ModelDeployment, previous: str | None, serving: str, revision: str, by_revision: dict[str, Obj],
             now: float, drain_seconds: float) -> RetiredRevision | None:
    """Blue/green: the revision the Service selected until this switch (now), or until one a drain ago."""
    if drain_seconds <= 0:
        return None
    if previous is not None and serving == revision:
        return RetiredRevision(name=previous, since=now)
    recorded = md.status.revisions.retired if md.status.revisions else None
    if (recorded is not None and recorded.name in by_revision and recorded.name not in (serving, revision)
            and now < recorded.since + drain_seconds):
        return recorded
    return None


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
                latest=RevisionStatus(name=revision, replicas=md.spec.fixed_replicas),
            ),
        }
    )


_QUIET_CONDITIONS = frozenset({ConditionType.PROGRESSING, ConditionType.RECONCILING, ConditionType.STALLED})
"""Conditions whose transitions are not events of their own: the rollout records its events, with the numbers;
Reconciling and Stalled repeat the others."""


def _write_status(
    kube: Kube, meta: ObjectMeta, current: ModelDeploymentStatus, status: ModelDeploymentStatus, clock: Clock
) -> int:
    """Apply the status (with kstatus's Reconciling and Stalled summed up from its other conditions) when it
    changed, and record an event for each condition that moved. Returns writes."""
    status = status.model_copy(update={"conditions": kstatus_conditions(status.conditions, status.observed_generation,
                                                                        clock)})
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
        if cond.type in _QUIET_CONDITIONS:
            continue
        failing = cond.status == "False" and cond.reason not in (Reason.PROGRESSING, Reason.CONVERTING)
        try:
            kube.event(regarding, type_="Warning" if failing else "Normal", reason=cond.reason,
                       note=f"{cond.type}={cond.status}: {cond.message}")
        except ApiException as exc:  # an event is worth a try, not a failed reconcile
            log.warning("could not record event %s for %s/%s: %s %s", cond.reason, meta.namespace, meta.name,
                        exc.status, (exc.body or "")[:300])
        writes += 1
    return writes


def report_invalid_spec(kube: Kube, body: Obj, message: str, clock: Clock = utc_now,
                        reason: str = Reason.INVALID_SPEC) -> int:
    """A body that passed the CRD schema but not the models (or that the operator failed on): say so on the Ready
    condition, so that no accepted object is left without a status."""
    meta = body.get("metadata", {})
    try:
        current = ModelDeploymentStatus.model_validate(body.get("status") or {})
    except ValueError:
        current = ModelDeploymentStatus()
    conditions = set_condition(
        current.conditions, ConditionType.READY, False, reason, message, meta.get("generation"), clock
    )
    status = current.model_copy(update={"observed_generation": meta.get("generation"), "conditions": conditions})
    if status == current:
        return 0
    return _write_status(kube, ObjectMeta.model_validate(meta), current, status, clock)
