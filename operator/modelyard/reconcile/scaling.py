"""spec.scaling's reconciler: the autoscaler object, the replica count's hand-over, and status.scaling.

The operator never fights the autoscaler. With scaling on, its own apply of a Deployment leaves `spec.replicas`
out and marks the Deployment `modelyard.dev/replicas: autoscaler`. The count is written, by a second field manager
(`modelyard-replicas`), only:

- when scaling is turned on for a Deployment that had a fixed count (no mark yet): the current count, inside the
  range, before the apply that drops the field, so that the field is not reset to its default of 1;
- when a new revision's Deployment is created: the serving revision's current count (inside the range);
- while a revision rolls out beside the target: it follows the target's current count, so that switching to it
  never drops capacity; a canary instead runs its share of the model's replicas for the weight it is about to carry
  (modelyard.rollout.canary.canary_share), and the whole count before it is promoted.

The autoscaler (the HPA controller, and KEDA at zero) writes the target's count through the scale subresource; the
operator never writes the target's count after the hand-over, and a resync compares none, so it makes no write.

The autoscaler scales the revision that serves (`target`): a KEDA ScaledObject (engine keda) or an HPA (engine
hpa), named after the model. While another revision rolls out, or before the first one is available, its minimum
is at least 1.
"""

from __future__ import annotations

import logging
from typing import Any

from modelyard.api.conditions import Condition, Reason
from modelyard.api.names import ANNOTATION_REPLICAS
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.api.v1alpha1.rollout import Rollout, RolloutStatus
from modelyard.api.v1alpha1.scaling import Scaling, ScalingStatus
from modelyard.kube.client import HPAS, SCALED_OBJECTS, Obj, Resource
from modelyard.reconcile.common import Stop, Writer, owned_by
from modelyard.render.scaling import autoscaler_name, keda_hpa_name, render_hpa, render_scaled_object
from modelyard.rollout.canary import canary_share, model_replicas, weight_ahead

log = logging.getLogger(__name__)

REPLICAS_MANAGER = "modelyard-replicas"
"""The field manager that sets a Deployment's starting replica count under an autoscaler, and nothing else."""

_KINDS = {"keda": ("ScaledObject", SCALED_OBJECTS), "hpa": ("HorizontalPodAutoscaler", HPAS)}


def replicas_owners(deployment: Obj) -> set[str]:
    """The managers that own spec.replicas, as manager/operation[/subresource] (for diagnostics and tests)."""
    out = set()
    for entry in deployment.get("metadata", {}).get("managedFields") or []:
        if "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            out.add("/".join(p for p in (entry.get("manager", ""), entry.get("operation", ""),
                                         entry.get("subresource", "")) if p))
    return out


def autoscaled(deployment: Obj) -> bool:
    """The operator's apply already leaves this Deployment's count to the autoscaler."""
    annotations: dict[str, str] = deployment.get("metadata", {}).get("annotations") or {}
    return annotations.get(ANNOTATION_REPLICAS) == "autoscaler"


def current_replicas(deployment: Obj) -> int:
    return int(deployment.get("spec", {}).get("replicas", 1))


def clamp(scaling: Scaling, replicas: int) -> int:
    """A starting count inside the range, never 0: a revision that starts at zero could never become ready."""
    return min(max(replicas, scaling.min_replicas, 1), scaling.max_replicas)


def set_replicas(writer: Writer, deployment: Obj, replicas: int) -> Obj:
    """Write the count with the `modelyard-replicas` field manager (never the operator's main apply)."""
    meta = deployment["metadata"]
    partial = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "spec": {"replicas": replicas}}
    writer.count += 1
    return writer.kube.apply(partial, field_manager=REPLICAS_MANAGER)


def canary_replicas(md: ModelDeployment, stable: Obj, state: RolloutStatus | None, weight: int) -> int:
    """A canary's count: its share of the model's replicas for the weight it must carry next. `weight`: the
    canary's weight now (the stable revision's count carries the rest)."""
    scaling = md.spec.scaling
    assert scaling is not None
    model = model_replicas(current_replicas(stable), weight, scaling.max_replicas)
    return canary_share(model, weight_ahead(state, md.spec.rollout or Rollout(strategy="canary")))


def follow_target(writer: Writer, md: ModelDeployment, by_revision: dict[str, Obj], target: str,
                  followers: set[str], count: int | None = None) -> None:
    """Keep each revision rolling out beside the target at the target's current count (inside the range), or at
    `count` (a canary's share)."""
    scaling = md.spec.scaling
    assert scaling is not None
    if target not in by_revision:
        return
    want = clamp(scaling, current_replicas(by_revision[target])) if count is None else count
    for rev in sorted(followers - {target}):
        follower = by_revision.get(rev)
        if follower is not None and current_replicas(follower) != want:
            by_revision[rev] = set_replicas(writer, follower, want)


def apply_revision(writer: Writer, md: ModelDeployment, live: Obj | None, desired: Obj, serving: Obj | None,
                   scaled_down: bool, start: int | None = None) -> Obj:
    """Apply a revision's Deployment and, with scaling, hand its count over: before the apply that drops the field
    when scaling was just turned on (or it resets to 1), after the apply that creates it (starting where the
    serving revision is, or at `start`: a canary's share). A rolled-back canary (`scaled_down`) is set to 0 by the
    apply itself."""
    scaling = md.spec.scaling
    if scaling is None or scaled_down:
        return writer.ensure(live, desired)
    if live is not None and not autoscaled(live):
        live = set_replicas(writer, live, clamp(scaling, current_replicas(live)))
    applied = writer.ensure(live, desired)
    if live is None:
        if start is None:
            start = clamp(scaling, current_replicas(serving) if serving is not None else scaling.min_replicas)
        applied = set_replicas(writer, applied, start)
    return applied


def reconcile_scaling(writer: Writer, md: ModelDeployment, by_revision: dict[str, Obj], revision: str, serving: str,
                      latest_available: bool, scaled_down: bool, prometheus_url: str | None,
                      now: float, canary_count: int | None = None) -> ScalingStatus | None:
    """The latest revision follows the serving one's count while it rolls out (unless it was scaled down; a canary
    runs `canary_count`), and the autoscaler scales the serving one; nothing scales to zero while a revision rolls
    out, nor before the first one was ever available. Returns status.scaling."""
    if md.spec.scaling is not None and serving in by_revision:
        follow_target(writer, md, by_revision, serving, {revision} if not scaled_down else set(), canary_count)
    if serving not in by_revision and md.status.scaling is None:
        return None
    recorded = md.status.revisions.stable if md.status.revisions else None
    never_served = not latest_available and (recorded is None or recorded.name != revision)
    return reconcile_autoscaler(writer, md, serving if serving in by_revision else None,
                                serving != revision or never_served, by_revision.get(serving), prometheus_url, now)


def _mirror(hpa: Obj | None, scaled_object: Obj | None) -> list[Condition]:
    """The autoscaler's own conditions, as they are: the HPA's (AbleToScale, ScalingActive, ScalingLimited), then
    KEDA's (Ready, Active) prefixed Keda."""
    out = []
    for source, prefix in ((hpa, ""), (scaled_object, "Keda")):
        for c in (source or {}).get("status", {}).get("conditions") or []:
            if not c.get("type") or c.get("status") not in ("True", "False", "Unknown"):
                continue
            out.append(Condition(
                type=f"{prefix}{c['type']}", status=c["status"], reason=c.get("reason") or "Unknown",
                message=(c.get("message") or "")[:1024],
                last_transition_time=c.get("lastTransitionTime") or "1970-01-01T00:00:00Z"))
    return out


def _metric_value(hpa: Obj | None) -> str | None:
    for m in (hpa or {}).get("status", {}).get("currentMetrics") or []:
        current = (m.get("external") or m.get("pods") or m.get("object") or {}).get("current", {})
        value = current.get("value") or current.get("averageValue")
        if value is not None:
            return str(value)
    return None


def reconcile_autoscaler(writer: Writer, md: ModelDeployment, target: str | None, rolling_out: bool,
                         target_deployment: Obj | None, prometheus_url: str | None,
                         now: float) -> ScalingStatus | None:
    """Apply (or remove) the autoscaler and describe it. `target`: the revision that serves, None before any."""
    kube, ns, name = writer.kube, md.metadata.namespace, autoscaler_name(md)
    scaling, previous = md.spec.scaling, md.status.scaling
    engine = scaling.engine if scaling is not None else None
    if previous is not None and previous.engine != engine:  # turned off, or the engine changed: remove the old one
        _remove(writer, md, _KINDS[previous.engine][1] if previous.engine in _KINDS else None, name)
    if scaling is None or target is None:
        return None
    kind, res = _KINDS[scaling.engine]
    live = kube.get(res, ns, name)
    if live is not None and not owned_by(live, md):
        raise Stop(Reason.NAME_CONFLICT, f"{kind} {ns}/{name} exists and is not owned by this ModelDeployment; "
                   "delete or rename it so the operator can create the model's autoscaler")
    if scaling.engine == "keda":
        if not prometheus_url:
            raise Stop(Reason.PROMETHEUS_NOT_CONFIGURED, "scaling with engine keda reads Triton's metrics from "
                       "Prometheus: set the operator's Prometheus address (chart value rollouts.prometheusUrl, "
                       "environment MODELYARD_PROMETHEUS_URL)")
        so = writer.ensure(live, render_scaled_object(md, target, prometheus_url, rolling_out))
        hpa = kube.get(HPAS, ns, keda_hpa_name(md))
    else:
        so = None
        hpa = writer.ensure(live, render_hpa(md, target))
    return _status(md, scaling, kind, target, target_deployment, hpa, so, now)


def _remove(writer: Writer, md: ModelDeployment, res: Resource | None, name: str) -> None:
    if res is None:
        return
    live = writer.kube.get(res, md.metadata.namespace, name)
    if live is not None and owned_by(live, md):
        writer.delete(res, md.metadata.namespace, name)


def _status(md: ModelDeployment, scaling: Scaling, kind: str, target: str, deployment: Obj | None,
            hpa: Obj | None, so: Obj | None, now: float) -> ScalingStatus:
    previous = md.status.scaling
    hpa_status: dict[str, Any] = (hpa or {}).get("status", {})
    spec_replicas = current_replicas(deployment) if deployment is not None else None
    ready = int((deployment or {}).get("status", {}).get("readyReplicas", 0))
    at_zero = spec_replicas == 0
    woke_at = previous.woke_at if previous is not None and previous.target == target else None
    cold_start = previous.last_cold_start_seconds if previous is not None else None
    was_zero = previous is not None and previous.scaled_to_zero and previous.target == target
    if (spec_replicas or 0) > 0 and ready == 0 and (was_zero or woke_at is not None):
        woke_at = woke_at if woke_at is not None else now
    elif ready > 0 and woke_at is not None:
        cold_start, woke_at = round(now - woke_at, 1), None
        log.info("%s/%s revision %s left zero: first pod ready after %.1fs", md.metadata.namespace,
                 md.metadata.name, target, cold_start)
    elif at_zero:
        woke_at = None
    return ScalingStatus(
        engine=scaling.engine,
        autoscaler=f"{kind}/{autoscaler_name(md)}",
        target=target,
        range=f"{scaling.min_replicas}-{scaling.max_replicas}",
        current_replicas=spec_replicas,
        desired_replicas=hpa_status.get("desiredReplicas", spec_replicas),
        current_value=_metric_value(hpa),
        last_scale_time=hpa_status.get("lastScaleTime"),
        scaled_to_zero=at_zero,
        woke_at=woke_at,
        last_cold_start_seconds=cold_start,
        conditions=_mirror(hpa, so),
    )

