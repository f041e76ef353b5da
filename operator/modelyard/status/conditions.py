"""One helper for conditions: lastTransitionTime moves only when the status does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from modelyard.api.conditions import Condition

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None,
    clock: Clock = utc_now,
) -> list[Condition]:
    """Conditions with `type_` set; the others kept in order. A new condition type is appended."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous and previous.status == value else rfc3339(clock())
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    if previous is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def find(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def transitions(before: Sequence[Condition], after: Sequence[Condition]) -> list[Condition]:
    """Conditions of `after` whose status or reason differs from `before`: each is worth an event."""
    out = []
    for cond in after:
        old = find(before, cond.type)
        if old is None or old.status != cond.status or old.reason != cond.reason:
            out.append(cond)
    return out
