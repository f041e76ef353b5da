"""Reconciling and Stalled, the conditions kstatus reads (Flux, kpt, `kubectl wait`), derived from the others.

kstatus computes a resource's status from `status.observedGeneration` and two "abnormal-true" conditions, present
only while True: `Reconciling` (InProgress: the operator is working towards the spec) and `Stalled` (Failed: it
cannot get there without a change by a person). With neither, and the generation observed, the resource is
Current. They are a summary of Ready, Converted, Validated and Progressing, so they are computed here from those,
in one place, on every status write:

- Stalled: Ready, Converted or Validated is False for a reason that no retry heals (the spec is refused, the
  conversion or its validation failed, the Deployment passed its progress deadline, a child's name is taken, the
  operator has no Prometheus for the autoscaler), or the latest revision's canary was rolled back (the stable
  revision serves, but not the spec as written).
- Reconciling: otherwise, while Ready is not True (a rollout, a conversion, pods starting; also waits that may end
  on their own: a pod that cannot be scheduled yet, a Secret that does not exist yet, an image that does not pull
  yet; each ends as Stalled at the Deployment's progress deadline, or is healed), or while a canary progresses.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.api.conditions import Condition, ConditionType, Reason
from modelyard.status.conditions import Clock, find, set_condition, utc_now

STALLED_REASONS: frozenset[str] = frozenset({
    Reason.INVALID_SPEC, Reason.APPLY_REJECTED, Reason.NAME_CONFLICT, Reason.SOURCE_UNSUPPORTED,
    Reason.PROGRESS_DEADLINE_EXCEEDED, Reason.PROMETHEUS_NOT_CONFIGURED, Reason.VALIDATION_FAILED,
    Reason.VALIDATION_INCONCLUSIVE, Reason.CONVERSION_UNSUPPORTED, Reason.SOURCE_REFUSED, Reason.SOURCE_UNREADABLE,
    Reason.CONVERSION_FAILED,
})
"""Reasons that no retry heals: the spec (or the operator's settings) must change, or a person must act."""

CANARY_UNDER_WAY: frozenset[str] = frozenset({Reason.CANARY_PROGRESSING, Reason.CANARY_WAITING, Reason.CANARY_PAUSED})

_KSTATUS = (ConditionType.RECONCILING, ConditionType.STALLED)


def kstatus_conditions(conditions: Sequence[Condition], generation: int | None,
                       clock: Clock = utc_now) -> list[Condition]:
    """`conditions` with Reconciling and Stalled set from the others (each present only while True), in the
    other conditions' words: the same reason and message."""
    stalled = _stalled(conditions)
    reconciling = _reconciling(conditions) if stalled is None else None
    out = [c for c in conditions if c.type not in _KSTATUS]
    for type_, why in ((ConditionType.RECONCILING, reconciling), (ConditionType.STALLED, stalled)):
        if why is not None:
            previous = find(conditions, type_)
            out = set_condition([*out, previous] if previous else out, type_, True, why[0], why[1], generation, clock)
    return out


def _stalled(conditions: Sequence[Condition]) -> tuple[str, str] | None:
    for type_ in (ConditionType.READY, ConditionType.VALIDATED, ConditionType.CONVERTED):
        c = find(conditions, type_)
        if c is not None and c.status == "False" and c.reason in STALLED_REASONS:
            return c.reason, c.message
    progressing = find(conditions, ConditionType.PROGRESSING)
    if progressing is not None and progressing.reason == Reason.CANARY_ROLLED_BACK:
        return progressing.reason, progressing.message
    return None


def _reconciling(conditions: Sequence[Condition]) -> tuple[str, str] | None:
    ready = find(conditions, ConditionType.READY)
    if ready is None:
        return Reason.PROGRESSING, "the operator has not reported on this generation yet"
    if ready.status != "True":
        return ready.reason, ready.message
    progressing = find(conditions, ConditionType.PROGRESSING)
    if progressing is not None and progressing.status == "True" and progressing.reason in CANARY_UNDER_WAY:
        return progressing.reason, progressing.message
    return None
