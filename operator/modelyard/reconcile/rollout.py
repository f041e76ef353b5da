"""The canary coordinator: observe the canary, measure it when an analysis is due, and ask next_step what now.

It reads; the caller applies what the decision says (the route's weights, the main Service, scaling a rolled-back
canary down) and records decision.status in status.rollout, so a restart resumes from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelyard.api.conditions import Reason
from modelyard.api.names import ANNOTATION_ABORT, ANNOTATION_PROMOTE, ANNOTATION_RESUME, HTTP_PORT
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.api.v1alpha1.rollout import Analysis, Measurement, Rollout, seconds
from modelyard.measure.prometheus import PrometheusError
from modelyard.measure.promql import Backend
from modelyard.render.traffic import revision_service_name
from modelyard.rollout.canary import Decision, Observed, measurement_due, model_replicas, next_step
from modelyard.status.revision import RevisionState

Analyst = Callable[[Analysis, Backend, Backend, str, float], Measurement]
"""(analysis, canary, stable, window, now) -> the canary's numbers; raises PrometheusError when it cannot ask."""

FAILURE_REASONS = frozenset({
    Reason.CRASH_LOOP_BACK_OFF, Reason.CONTAINER_TERMINATED, Reason.CONTAINER_RESTARTED, Reason.ERR_IMAGE_PULL,
    Reason.IMAGE_PULL_BACK_OFF, Reason.CREATE_CONTAINER_CONFIG_ERROR, Reason.PROGRESS_DEADLINE_EXCEEDED,
})
"""A canary whose revision reports one of these has failed: it is rolled back without waiting for an analysis.
Unschedulable is not among them: capacity may come (the Deployment's progress deadline ends the wait)."""

NO_PROMETHEUS = ("the canary cannot be measured: the operator has no Prometheus to ask (MODELYARD_PROMETHEUS_URL, "
                 "chart value rollouts.prometheusUrl)")


@dataclass(frozen=True)
class CanaryView:
    decision: Decision
    note: str
    """Why a due analysis did not run, for the Progressing condition; empty when it ran or was not due."""


def backend(md: ModelDeployment, revision: str) -> Backend:
    return Backend(md.metadata.namespace, revision_service_name(md, revision), HTTP_PORT, revision, md.metadata.name)


def observe_canary(md: ModelDeployment, canary: RevisionState, stable: str, now: float,
                   analyst: Analyst | None, stable_replicas: int | None = None) -> CanaryView:
    """`stable_replicas`: with autoscaling, the stable revision's current count (the canary runs its share)."""
    spec = md.spec.rollout or Rollout(strategy="canary")
    prior = md.status.rollout
    state = prior if prior is not None and prior.canary == canary.revision else None
    measurement, note = None, ""
    if measurement_due(state, spec, now):
        analysis = spec.canary.analysis
        if analyst is None:
            note = NO_PROMETHEUS
        else:
            window = f"{max(1, round(seconds(analysis.interval)))}s"
            try:
                measurement = analyst(analysis, backend(md, canary.revision), backend(md, stable), window, now)
            except PrometheusError as exc:
                note = f"the analysis could not run (it is tried again next interval): {exc}"[:1000]
    annotations = md.metadata.annotations
    step = (state.step if state else 0) + 1
    seen = Observed(
        canary=canary.revision, canary_ready=canary.available, now=now, stable=stable, measurement=measurement,
        resume=annotations.get(ANNOTATION_RESUME) == f"{canary.revision}/{step}",
        promote=annotations.get(ANNOTATION_PROMOTE) == canary.revision,
        abort=annotations.get(ANNOTATION_ABORT) == canary.revision,
        failure=f"{canary.reason}: {canary.message}" if canary.reason in FAILURE_REASONS else None,
        model_replicas=None if md.spec.scaling is None or stable_replicas is None else model_replicas(
            stable_replicas, state.weight if state else 0, md.spec.scaling.max_replicas),
        canary_ready_replicas=canary.ready_replicas,
    )
    return CanaryView(next_step(state, seen, spec), note)
