"""Reconciling and Stalled (kstatus) as a table of the other conditions. tests/integration/test_kstatus.py computes
kstatus with its real library on live objects."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelyard.api.conditions import Condition
from modelyard.status.kstatus import kstatus_conditions

T0 = "2026-01-01T00:00:00Z"


def c(type_: str, status: str, reason: str, message: str = "") -> Condition:
    return Condition(type=type_, status=status, reason=reason, message=message or reason, last_transition_time=T0)


def later() -> datetime:
    return datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(("given", "reconciling", "stalled"), [
    # Nothing reported yet on this generation (the status default): working on it.
    ([], "Progressing", None),
    ([c("Ready", "True", "Available")], None, None),
    ([c("Ready", "True", "ScaledToZero")], None, None),
    ([c("Ready", "False", "Progressing", "revision r: 0/1 replicas ready")], "Progressing", None),
    # Waits that may end on their own are InProgress; the Deployment's progress deadline ends them.
    ([c("Ready", "False", "Unschedulable")], "Unschedulable", None),
    ([c("Ready", "False", "SecretNotFound")], "SecretNotFound", None),
    ([c("Ready", "False", "ImagePullBackOff")], "ImagePullBackOff", None),
    ([c("Ready", "False", "ReconcileFailed")], "ReconcileFailed", None),
    ([c("Ready", "False", "ProgressDeadlineExceeded")], None, "ProgressDeadlineExceeded"),
    # Refusals no retry heals.
    ([c("Ready", "False", "InvalidSpec")], None, "InvalidSpec"),
    ([c("Ready", "False", "ApplyRejected")], None, "ApplyRejected"),
    ([c("Ready", "False", "NameConflict")], None, "NameConflict"),
    ([c("Ready", "False", "PrometheusNotConfigured")], None, "PrometheusNotConfigured"),
    ([c("Ready", "False", "Converting"), c("Converted", "Unknown", "Converting")], "Converting", None),
    ([c("Ready", "False", "ValidationFailed"), c("Converted", "True", "Converted"),
      c("Validated", "False", "ValidationFailed")], None, "ValidationFailed"),
    # A new revision's conversion fails while the old one serves (Ready stays True): the spec is not served.
    ([c("Ready", "True", "Available"), c("Converted", "False", "ConversionFailed")], None, "ConversionFailed"),
    # Canary rollouts: Ready is the stable revision's; the canary under way is work, a rolled-back one a failure.
    ([c("Ready", "True", "Available"), c("Progressing", "True", "CanaryWaiting")], "CanaryWaiting", None),
    ([c("Ready", "True", "Available"), c("Progressing", "True", "CanaryPaused")], "CanaryPaused", None),
    ([c("Ready", "True", "Available"), c("Progressing", "True", "CanaryPromoted")], None, None),
    ([c("Ready", "True", "Available"), c("Progressing", "True", "RolloutComplete")], None, None),
    ([c("Ready", "True", "Available"), c("Progressing", "False", "CanaryRolledBack")], None, "CanaryRolledBack"),
])
def test_reconciling_and_stalled(given: list[Condition], reconciling: str | None, stalled: str | None) -> None:
    out = {x.type: x for x in kstatus_conditions(given, 3, later)}
    assert (out["Reconciling"].reason if "Reconciling" in out else None) == reconciling
    assert (out["Stalled"].reason if "Stalled" in out else None) == stalled
    for x in (out.get("Reconciling"), out.get("Stalled")):
        assert x is None or (x.status, x.observed_generation) == ("True", 3)
    # The others are kept as they are, in their order.
    assert [x for x in out.values() if x.type not in ("Reconciling", "Stalled")] == given


def test_the_summary_keeps_its_transition_time_and_goes_when_it_no_longer_holds() -> None:
    first = kstatus_conditions([c("Ready", "False", "Progressing", "0/1 replicas ready")], 1, lambda: datetime(
        2026, 1, 1, 0, 1, tzinfo=UTC))
    again = kstatus_conditions([*first[:1], first[1]], 1, later)
    assert again == first, "an unchanged summary is no status write"
    moved = kstatus_conditions([c("Ready", "False", "Progressing", "1/2 replicas ready"), first[1]], 1, later)
    assert moved[1].last_transition_time == "2026-01-01T00:01:00Z" and moved[1].message == "1/2 replicas ready"
    done = kstatus_conditions([c("Ready", "True", "Available"), first[1]], 1, later)
    assert [x.type for x in done] == ["Ready"]
