"""The canary's next move: a pure function of the rollout's state, the newest measurement and the spec.

The reconciler observes (is the canary Ready, what did the last analysis measure, did a person ask for
something), calls next_step, applies the weight it returns and records the state in status.rollout, so an
operator restart resumes at the same step with the same weight. Rules:
- a new canary revision (a spec change, even mid-rollout) starts from step 0 at weight 0;
- a setWeight step moves the weight only to a canary whose pods are all Ready, and completes once an analysis at
  that weight has passed: evidence at every weight; too little traffic is inconclusive and the rollout waits;
- with autoscaling, the canary runs its share of the model's replicas (canary_share): before each weight, and
  before promotion (100%), it waits until its Ready pods can carry that share; meanwhile it keeps the weight it has
  while any of its pods is Ready (a canary that grows is not a canary that fails);
- a pause holds for its duration, or, without one, until a person resumes that step;
- failed analyses count over the whole rollout; at failureLimit the canary is rolled back: weight 0 at once (its
  pods drain, then are scaled to 0), and the revision stays rolled back (it is remembered) until the spec changes
  again;
- after the last step the canary is promoted: weight 100, it becomes the stable revision;
- a person can pause (spec.rollout.paused: analysis goes on), promote now (the remaining steps are skipped; the
  canary still gets its full share of pods first), or abort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from modelyard.api.conditions import Reason
from modelyard.api.v1alpha1.rollout import Analysis, Measurement, Rollout, RolloutStatus, seconds

PROGRESSING, WAITING, PAUSED = Reason.CANARY_PROGRESSING, Reason.CANARY_WAITING, Reason.CANARY_PAUSED
PROMOTED, ROLLED_BACK = Reason.CANARY_PROMOTED, Reason.CANARY_ROLLED_BACK


@dataclass(frozen=True)
class Observed:
    """What the reconciler saw this time."""

    canary: str
    """The latest revision: the one being rolled out."""
    canary_ready: bool
    now: float
    stable: str | None = None
    """The revision that serves now: recorded when a canary begins, kept for the drain after promotion."""
    measurement: Measurement | None = None
    """The newest analysis of the canary (the same one again is not counted twice)."""
    resume: bool = False
    """A person released the indefinite pause at the current step."""
    promote: bool = False
    abort: bool = False
    failure: str | None = None
    """The canary's pods failed (a container exited or restarts, an image does not pull): roll back at once."""
    model_replicas: int | None = None
    """With autoscaling: the replicas the whole model runs on now (model_replicas()); the canary gets its share of
    them before each weight. None: the canary runs its full replica count from the start (a fixed count)."""
    canary_ready_replicas: int = 0

    def carries(self, weight: int) -> bool:
        """Can the canary's Ready pods take `weight` percent of the requests?"""
        if self.model_replicas is None:
            return self.canary_ready
        return self.canary_ready_replicas >= canary_share(self.model_replicas, weight)

    def serves(self) -> bool:
        """Does the canary keep the weight it has? With autoscaling, while any of its pods is Ready (it may be
        growing to its next share); with a fixed count, while all are."""
        return self.canary_ready if self.model_replicas is None else self.canary_ready_replicas > 0


def model_replicas(stable_replicas: int, weight: int, max_replicas: int) -> int:
    """The replicas the whole model needs: the stable revision's count carries (100 - weight)% of the requests."""
    if weight >= 100:
        return min(max(stable_replicas, 1), max_replicas)
    return min(max(math.ceil(stable_replicas * 100 / (100 - weight)), 1), max_replicas)


def canary_share(model: int, weight: int) -> int:
    """The canary's replicas for `weight` percent of a model that needs `model` replicas: at least 1."""
    return max(1, math.ceil(model * weight / 100 - 1e-9))


def weight_ahead(state: RolloutStatus | None, spec: Rollout) -> int:
    """The weight the canary must be able to carry next: its current one, the one its current step sets, or 100
    once every step passed (its replicas are scaled for this before the weight moves)."""
    if state is None:
        state = RolloutStatus(canary="", step_started_at=0)
    if state.phase == "Promoted":
        return 100
    if state.phase == "RolledBack":
        return 0
    steps = spec.canary.steps
    if state.step >= len(steps):
        return 100
    return max(state.weight, steps[state.step].set_weight or 0)


@dataclass(frozen=True)
class Decision:
    status: RolloutStatus
    weight: int
    """The canary's share of the gateway's requests, to apply now (0 while its pods are not Ready)."""
    reason: str
    event: str | None = None
    """Something changed that deserves an event (a new weight, an analysis, the end), with its numbers."""
    warning: bool = False
    """The event reports a failure (a failed analysis, a rollback): a Warning event."""


def verdict(m: Measurement, analysis: Analysis) -> tuple[str, str]:
    """passed | failed | inconclusive, and the numbers as a person reads them."""
    checks = ", ".join(f"{c.name} {_num(c.value)} {c.threshold}".strip() for c in m.checks)
    summary = f"{checks}, {m.requests:,} requests" if checks else f"{m.requests:,} requests"
    if m.requests < analysis.min_requests:
        return "inconclusive", f"{m.requests:,} requests < {analysis.min_requests:,} needed to judge"
    if any(c.passed is False for c in m.checks):
        failed = ", ".join(f"{c.name} {_num(c.value)} not {c.threshold}" for c in m.checks if c.passed is False)
        return "failed", f"{failed} ({m.requests:,} requests)"
    if any(c.passed is None for c in m.checks):
        missing = ", ".join(c.name for c in m.checks if c.passed is None)
        return "inconclusive", f"no data for {missing} ({m.requests:,} requests)"
    return "passed", summary


def _num(v: float | None) -> str:
    return "no data" if v is None else f"{v:.4g}"


def _with(s: RolloutStatus, **changes: object) -> RolloutStatus:
    return s.model_copy(update=changes)


def next_step(state: RolloutStatus | None, seen: Observed, spec: Rollout) -> Decision:
    """Given where the rollout is and what was just observed, what happens next."""
    now = seen.now
    if state is None or state.canary != seen.canary:
        state = RolloutStatus(canary=seen.canary, stable=seen.stable, step_started_at=now)
    if state.phase == "Promoted":
        return Decision(state, 100, PROMOTED)
    if state.phase == "RolledBack":
        return Decision(state, 0, ROLLED_BACK)
    if seen.abort:
        return _roll_back(state, "aborted by a person", now)
    if seen.failure:
        return _roll_back(state, f"weight {state.weight}%: the canary's pods failed: {seen.failure}", now)
    if seen.promote:
        state = _with(state, step=len(spec.canary.steps))
        if seen.carries(100):
            return _promote(state, "promoted by a person", now)

    event: str | None = None
    warning = False
    inconclusive = ""
    analysis = spec.canary.analysis
    m = seen.measurement
    fresh = m is not None and (state.last_measurement is None or m.at > state.last_measurement.at)
    if m is not None and fresh and state.weight > 0:
        outcome, summary = verdict(m, analysis)
        state = _with(state, last_measurement=m)
        if outcome == "failed":
            failed = state.failed_checks + 1
            state = _with(state, failed_checks=failed)
            if failed >= analysis.failure_limit:
                return _roll_back(state, f"weight {state.weight}%: {summary}; {failed} failed checks reached "
                                         f"failureLimit {analysis.failure_limit}", now)
            event = f"weight {state.weight}%: check failed ({failed}/{analysis.failure_limit}): {summary}"
            warning = True
        elif outcome == "passed":
            state = _with(state, passed_at_step=state.passed_at_step + 1)
            event = f"weight {state.weight}%: {summary}"
    # Why the rollout waits is part of its state, not of one reconcile: the newest analysis at this weight, fresh or
    # already recorded, says so until a newer one replaces it (a reconcile between analyses keeps the message).
    last = state.last_measurement
    if state.weight > 0 and last is not None and last.at >= state.step_started_at:
        outcome, summary = verdict(last, analysis)
        if outcome == "inconclusive":
            inconclusive = f"; inconclusive: {summary}"

    def hold(current: RolloutStatus, reason: str, message: str) -> Decision:
        phase = "Paused" if reason == PAUSED else "Progressing"
        held = _with(current, phase=phase, message=message)
        return Decision(held, held.weight if seen.serves() else 0, reason, event, warning)

    if spec.paused:
        return hold(state, PAUSED, f"paused by spec.rollout.paused at weight {state.weight}%{inconclusive}")

    steps = spec.canary.steps
    while state.step < len(steps):
        step, where = steps[state.step], f"step {state.step + 1}/{len(steps)}"
        if step.set_weight is not None:
            if state.weight != step.set_weight:
                if not seen.carries(step.set_weight):
                    return hold(state, WAITING, f"{where}: waiting for the canary's pods to be Ready before "
                                         f"{step.set_weight}%{_pods(seen, step.set_weight)}")
                state = _with(state, weight=step.set_weight, step_started_at=now, passed_at_step=0, phase="Progressing",
                              message=f"{where}: weight {step.set_weight}%")
                return Decision(state, state.weight, PROGRESSING,
                                "; ".join(e for e in (event, f"{where}: weight {step.set_weight}%") if e), warning)
            if state.passed_at_step < 1:
                return hold(state, WAITING, f"{where}: weight {state.weight}%, waiting for a passing analysis"
                                     f"{inconclusive}")
        elif step.pause is not None:
            if step.pause.duration is None:
                if not seen.resume:
                    return hold(state, PAUSED, f"{where}: paused at weight {state.weight}% until a person resumes")
            else:
                until = state.step_started_at + seconds(step.pause.duration)
                if now < until:
                    # The end time, not a countdown: a message that changed on every reconcile would be a write.
                    return hold(state, WAITING, f"{where}: pause {step.pause.duration} at weight {state.weight}% "
                                         f"until {_clock(until)}{inconclusive}")
        state = _with(state, step=state.step + 1, step_started_at=now, passed_at_step=0)
    if not seen.carries(100):
        asked = "a person asked to promote" if seen.promote else f"all {len(steps)} steps passed"
        return hold(state, WAITING, f"{asked}; waiting for the canary's pods to be Ready before 100%"
                                    f"{_pods(seen, 100)}")
    promoted = _promote(state, "promoted by a person" if seen.promote else f"all {len(steps)} steps passed", now)
    return Decision(promoted.status, 100, PROMOTED, "; ".join(e for e in (event, promoted.event) if e), warning)


def _pods(seen: Observed, weight: int) -> str:
    if seen.model_replicas is None:
        return ""
    return f" ({seen.canary_ready_replicas}/{canary_share(seen.model_replicas, weight)} Ready)"


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _promote(state: RolloutStatus, why: str, now: float) -> Decision:
    done = _with(state, weight=100, phase="Promoted", message=f"promoted: {why}", finished_at=now)
    return Decision(done, 100, PROMOTED, f"revision {state.canary} promoted: {why}")


def _roll_back(state: RolloutStatus, why: str, now: float) -> Decision:
    done = _with(state, weight=0, phase="RolledBack", message=f"rolled back: {why}", finished_at=now)
    return Decision(done, 0, ROLLED_BACK, f"revision {state.canary} rolled back: {why}", warning=True)


def measurement_due(state: RolloutStatus | None, spec: Rollout, now: float) -> bool:
    """Is an analysis due? Every interval while the canary has a weight, each covering time at that weight only."""
    if state is None or state.phase not in ("Progressing", "Paused") or state.weight == 0:
        return False
    return now >= _next_measurement(state, spec)


def _next_measurement(state: RolloutStatus, spec: Rollout) -> float:
    last = state.last_measurement.at if state.last_measurement else 0.0
    return max(state.step_started_at, last) + seconds(spec.canary.analysis.interval)


def wake_after(state: RolloutStatus | None, spec: Rollout, now: float, drain_seconds: float) -> float | None:
    """Seconds until the rollout has something to do without any event: an analysis, a pause's end, a drain's end."""
    if state is None:
        return None
    times = []
    if state.phase in ("Progressing", "Paused"):
        if state.weight > 0:
            # Past due means this reconcile could not measure (Prometheus unreachable): try again an interval on.
            due = _next_measurement(state, spec)
            times.append(due if due > now else now + seconds(spec.canary.analysis.interval))
        steps = spec.canary.steps
        if state.step < len(steps) and (pause := steps[state.step].pause) and pause.duration:
            times.append(state.step_started_at + seconds(pause.duration))
    elif state.phase in ("Promoted", "RolledBack") and state.finished_at is not None:
        times.append(state.finished_at + drain_seconds)  # the predecessor, or the rolled-back canary, drains
    future = [t - now for t in times if t > now]
    return max(min(future), 0.5) if future else None
