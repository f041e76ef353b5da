"""next_step, the canary's decision, as a table of situations: no cluster, no clock, no Prometheus."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.api.v1alpha1.rollout import CheckResult, Measurement, Rollout, RolloutStatus, seconds
from modelyard.rollout.canary import (
    PAUSED,
    PROGRESSING,
    PROMOTED,
    ROLLED_BACK,
    WAITING,
    Decision,
    Observed,
    next_step,
    verdict,
)

SPEC = Rollout.model_validate({"strategy": "canary", "canary": {
    "steps": [{"setWeight": 10}, {"pause": {"duration": "60s"}}, {"setWeight": 50}],
    "analysis": {"interval": "30s", "failureLimit": 2, "minRequests": 20}}})


def good(at: float, requests: int = 120) -> Measurement:
    return Measurement(at=at, requests=requests, checks=[
        CheckResult(name="success-rate", value=99.9, threshold=">= 99%", passed=True),
        CheckResult(name="latency-p99", value=41, threshold="<= 200 ms", passed=True)])


def bad(at: float) -> Measurement:
    return Measurement(at=at, requests=300, checks=[
        CheckResult(name="success-rate", value=71.2, threshold=">= 99%", passed=False),
        CheckResult(name="latency-p99", value=44, threshold="<= 200 ms", passed=True)])


def step(state: RolloutStatus | None, now: float, spec: Rollout = SPEC, **seen: Any) -> Decision:
    return next_step(state, Observed(canary=seen.pop("canary", "rev-b"), canary_ready=seen.pop("ready", True),
                                     now=now, **seen), spec)


def at_weight_10() -> RolloutStatus:
    return step(None, 0).status


def test_a_new_canary_gets_traffic_only_once_its_pods_are_ready() -> None:
    d = step(None, 0, ready=False)
    assert (d.weight, d.reason, d.status.step) == (0, WAITING, 0)
    assert "waiting for the canary's pods to be Ready before 10%" in d.status.message
    d = step(d.status, 5)
    assert (d.weight, d.reason, d.event) == (10, PROGRESSING, "step 1/3: weight 10%")


def test_each_weight_needs_a_passing_analysis_and_too_little_traffic_waits() -> None:
    s = at_weight_10()
    d = step(s, 10)
    assert (d.weight, d.reason) == (10, WAITING) and "waiting for a passing analysis" in d.status.message
    d = step(s, 30, measurement=good(30, requests=5))
    assert (d.weight, d.reason, d.status.passed_at_step) == (10, WAITING, 0)
    assert "inconclusive: 5 requests < 20 needed to judge" in d.status.message
    # A reconcile between analyses (a pod event, a resync) keeps saying why it waits: no flip, no status write.
    assert step(d.status, 40).status == d.status
    d = step(d.status, 60, measurement=good(60))
    # The pass completes step 1 and starts the pause at the same weight.
    assert (d.weight, d.reason, d.status.step) == (10, WAITING, 1)
    assert d.event == "weight 10%: success-rate 99.9 >= 99%, latency-p99 41 <= 200 ms, 120 requests"
    assert "pause 60s at weight 10% until 1970-01-01T00:02:00Z" in d.status.message
    # Time passing within the pause changes nothing: a resync makes no status write.
    assert step(d.status, 90).status == d.status


def test_a_canary_records_the_stable_revision_and_when_it_ended() -> None:
    s = step(None, 0, stable="rev-a").status
    assert (s.stable, s.finished_at) == ("rev-a", None)
    # A later observation that names no stable revision (it is now the canary's own) keeps the record.
    assert step(s, 5).status.stable == "rev-a"
    promoted = step(s, 7, promote=True).status
    assert (promoted.phase, promoted.finished_at, promoted.stable) == ("Promoted", 7, "rev-a")
    rolled_back = step(s, 8, abort=True).status
    assert (rolled_back.phase, rolled_back.finished_at) == ("RolledBack", 8)


def test_the_same_measurement_is_not_counted_twice_and_one_at_weight_0_not_at_all() -> None:
    s = at_weight_10()
    once = step(s, 31, measurement=bad(30)).status
    assert once.failed_checks == 1
    assert step(once, 40, measurement=bad(30)).status.failed_checks == 1
    unready = step(None, 0, ready=False).status
    assert step(unready, 31, ready=False, measurement=bad(30)).status.failed_checks == 0


def test_failure_limit_rolls_back_at_once_with_the_numbers_and_remembers_the_revision() -> None:
    s = at_weight_10()
    d = step(s, 31, measurement=bad(30))
    assert (d.weight, d.reason) == (10, WAITING)
    assert d.event == "weight 10%: check failed (1/2): success-rate 71.2 not >= 99% (300 requests)"
    assert d.warning, "a failed check is a Warning event"
    assert not step(s, 31, measurement=good(30)).warning
    d = step(d.status, 61, measurement=bad(60))
    assert (d.weight, d.reason, d.status.phase, d.warning) == (0, ROLLED_BACK, "RolledBack", True)
    assert d.status.message == ("rolled back: weight 10%: success-rate 71.2 not >= 99% (300 requests); 2 failed "
                                "checks reached failureLimit 2")
    # Rolled back stays rolled back for this revision, whatever comes next; a new revision starts over.
    assert step(d.status, 90, measurement=good(90)).weight == 0
    again = step(d.status, 100, canary="rev-c")
    assert (again.weight, again.status.canary, again.status.failed_checks) == (10, "rev-c", 0)


def test_pauses_hold_for_their_duration_or_until_a_person_resumes() -> None:
    s = step(at_weight_10(), 30, measurement=good(30)).status  # in the 60 s pause since t=30
    assert step(s, 80).reason == WAITING and step(s, 80).weight == 10
    d = step(s, 91)
    assert (d.weight, d.status.step, d.event) == (50, 2, "step 3/3: weight 50%")

    manual = Rollout.model_validate({"strategy": "canary", "canary": {"steps": [{"setWeight": 10}, {"pause": {}},
                                                                                {"setWeight": 50}]}})
    s = step(step(None, 0, spec=manual).status, 30, spec=manual, measurement=good(30)).status
    d = step(s, 10_000, spec=manual)
    assert (d.reason, d.weight) == (PAUSED, 10) and "until a person resumes" in d.status.message
    assert step(s, 10_001, spec=manual, resume=True).weight == 50


def test_the_last_step_passing_promotes() -> None:
    s = step(step(at_weight_10(), 30, measurement=good(30)).status, 91).status  # weight 50, step 3
    d = step(s, 120, measurement=good(120))
    assert (d.weight, d.reason, d.status.phase) == (100, PROMOTED, "Promoted")
    assert d.event is not None and d.event.endswith("revision rev-b promoted: all 3 steps passed")
    assert step(d.status, 500, measurement=bad(500)).weight == 100  # promoted is final


@pytest.mark.parametrize(("seen", "weight", "reason"), [({"promote": True}, 100, PROMOTED),
                                                        ({"abort": True}, 0, ROLLED_BACK)])
def test_a_person_can_promote_or_abort(seen: dict[str, Any], weight: int, reason: str) -> None:
    d = step(at_weight_10(), 20, **seen)
    assert (d.weight, d.reason) == (weight, reason)
    assert "by a person" in d.status.message


def test_spec_paused_holds_the_weight_but_failures_still_roll_back() -> None:
    paused = SPEC.model_copy(update={"paused": True})
    s = at_weight_10()
    d = step(s, 31, spec=paused, measurement=good(30))
    assert (d.weight, d.reason, d.status.step) == (10, PAUSED, 0)
    d = step(step(d.status, 61, spec=paused, measurement=bad(60)).status, 91, spec=paused, measurement=bad(90))
    assert (d.weight, d.reason) == (0, ROLLED_BACK)


def test_a_spec_change_mid_rollout_starts_the_new_revision_from_step_one() -> None:
    s = step(at_weight_10(), 30, measurement=good(30)).status
    d = step(s, 40, canary="rev-c", ready=False)
    assert (d.weight, d.status.canary, d.status.step) == (0, "rev-c", 0)


def test_a_canary_that_loses_readiness_gets_no_traffic_and_resumes_at_its_weight() -> None:
    s = at_weight_10()
    d = step(s, 20, ready=False)
    assert (d.weight, d.status.weight) == (0, 10)
    assert step(d.status, 25).weight == 10


def test_an_operator_restart_resumes_at_the_same_step_and_weight() -> None:
    s = step(at_weight_10(), 30, measurement=good(30)).status
    stored = RolloutStatus.model_validate(s.model_dump(mode="json", by_alias=True))
    assert stored == s
    assert step(stored, 40) == step(s, 40)


def test_verdicts() -> None:
    analysis = SPEC.canary.analysis
    assert verdict(good(0), analysis)[0] == "passed"
    no_data = Measurement(at=0, requests=100, checks=[CheckResult(name="latency-p99", threshold="<= 200 ms")])
    assert verdict(no_data, analysis) == ("inconclusive", "no data for latency-p99 (100 requests)")


@pytest.mark.parametrize(("text", "value"), [("30s", 30), ("2m", 120), ("1h30m", 5400), ("250ms", 0.25)])
def test_durations(text: str, value: float) -> None:
    assert seconds(text) == value


def test_a_step_is_one_thing() -> None:
    with pytest.raises(ValueError, match="either setWeight or pause"):
        Rollout.model_validate({"canary": {"steps": [{"setWeight": 10, "pause": {}}]}})


def test_an_analysis_is_due_every_interval_at_a_weight_and_never_at_weight_0() -> None:
    from modelyard.rollout.canary import measurement_due

    s = at_weight_10()  # weight 10 since t=0, interval 30 s
    assert [measurement_due(s, SPEC, t) for t in (0, 29, 30)] == [False, False, True]
    measured = step(s, 31, measurement=good(31)).status
    assert [measurement_due(measured, SPEC, t) for t in (40, 61)] == [False, True]
    assert not measurement_due(step(None, 0, ready=False).status, SPEC, 100)
    assert not measurement_due(None, SPEC, 100)
    assert not measurement_due(step(s, 5, abort=True).status, SPEC, 100)


def test_the_operator_wakes_for_the_next_analysis_a_pause_end_or_a_drain_end() -> None:
    from modelyard.rollout.canary import wake_after

    s = at_weight_10()
    assert wake_after(s, SPEC, 10, drain_seconds=30) == 20
    # Past due (Prometheus could not be asked): try again an interval on, not in a busy loop.
    assert wake_after(s, SPEC, 45, drain_seconds=30) == 30
    pausing = step(s, 60, measurement=good(60)).status  # step 2: pause 60s from t=60
    assert pausing.step == 1 and wake_after(pausing, SPEC, 70, drain_seconds=30) == 20  # analysis before pause end
    promoted = step(s, 80, promote=True).status
    assert wake_after(promoted, SPEC, 90, drain_seconds=30) == 20
    assert wake_after(promoted, SPEC, 200, drain_seconds=30) is None
    rolled_back = step(s, 80, abort=True).status  # its pods drain 30 s too, then are scaled down
    assert wake_after(rolled_back, SPEC, 90, drain_seconds=30) == 20
    assert wake_after(rolled_back, SPEC, 200, drain_seconds=30) is None
    assert wake_after(None, SPEC, 0, drain_seconds=30) is None


# With autoscaling the canary runs its share of the model's replicas: the stable revision's count carries the rest.
@pytest.mark.parametrize(("stable", "weight", "maximum", "model"), [
    (4, 0, 10, 4), (4, 20, 10, 5), (4, 50, 10, 8), (3, 50, 4, 4), (0, 0, 10, 1), (2, 100, 10, 2), (1, 90, 20, 10),
])
def test_model_replicas(stable: int, weight: int, maximum: int, model: int) -> None:
    from modelyard.rollout.canary import model_replicas

    assert model_replicas(stable, weight, maximum) == model


@pytest.mark.parametrize(("model", "weight", "share"), [
    (5, 0, 1), (5, 10, 1), (5, 20, 1), (5, 21, 2), (5, 50, 3), (5, 100, 5), (10, 30, 3), (1, 100, 1),
])
def test_canary_share(model: int, weight: int, share: int) -> None:
    from modelyard.rollout.canary import canary_share

    assert canary_share(model, weight) == share


def test_weight_ahead_is_the_weight_the_canary_must_carry_next() -> None:
    from modelyard.rollout.canary import weight_ahead

    assert weight_ahead(None, SPEC) == 10  # before the first weight: scaled for it
    s = at_weight_10()
    assert weight_ahead(s, SPEC) == 10  # at 10%, waiting for its analysis
    pausing = step(s, 30, measurement=good(30)).status
    assert weight_ahead(pausing, SPEC) == 10  # a pause holds the weight
    at_50 = step(pausing, 91).status
    assert weight_ahead(at_50, SPEC) == 50
    passed = at_50.model_copy(update={"step": 3})
    assert weight_ahead(passed, SPEC) == 100  # every step passed: the whole count before promotion
    assert weight_ahead(step(s, 40, abort=True).status, SPEC) == 0


def scaled(ready: int, model: int = 10, **seen: Any) -> dict[str, Any]:
    return {"model_replicas": model, "canary_ready_replicas": ready, "ready": False, **seen}


def test_with_autoscaling_each_weight_waits_for_the_canarys_share_and_a_growing_canary_keeps_its_weight() -> None:
    d = step(None, 0, **scaled(0))
    assert (d.weight, d.reason) == (0, WAITING)
    assert "before 10% (0/1 Ready)" in d.status.message
    d = step(d.status, 5, **scaled(1))  # one pod carries 10% of 10: the weight moves, not all pods need be Ready
    assert (d.weight, d.reason) == (10, PROGRESSING)
    d = step(d.status, 30, measurement=good(30), **scaled(1))  # passed; the 60 s pause holds 10%
    d = step(d.status, 91, **scaled(3))  # the pause ended: 50% of 10 needs 5 Ready; 3 keep 10% meanwhile
    assert (d.weight, d.reason, d.status.weight) == (10, WAITING, 10)
    assert "step 3/3: waiting for the canary's pods to be Ready before 50% (3/5 Ready)" in d.status.message
    d = step(d.status, 95, **scaled(5))
    assert (d.weight, d.reason) == (50, PROGRESSING)
    # The last analysis passed: promotion waits until the canary runs the whole model's count.
    d = step(d.status, 130, measurement=good(130), **scaled(5))
    assert (d.weight, d.reason, d.status.phase) == (50, WAITING, "Progressing")
    assert "all 3 steps passed; waiting for the canary's pods to be Ready before 100% (5/10 Ready)" in d.status.message
    assert step(d.status, 140, **scaled(9)).weight == 50
    d = step(d.status, 150, **scaled(10))
    assert (d.weight, d.reason, d.status.phase) == (100, PROMOTED, "Promoted")
    assert d.event is not None and d.event.endswith("promoted: all 3 steps passed")
    # No Ready pod at all: no traffic, whatever the count.
    assert step(at_weight_10(), 20, **scaled(0)).weight == 0


def test_with_autoscaling_a_persons_promotion_waits_for_the_whole_count() -> None:
    from modelyard.rollout.canary import weight_ahead

    d = step(at_weight_10(), 20, promote=True, **scaled(1))
    assert (d.weight, d.reason) == (10, WAITING)
    assert "a person asked to promote; waiting for the canary's pods to be Ready before 100% (1/10 Ready)" in (
        d.status.message)
    assert weight_ahead(d.status, SPEC) == 100  # the remaining steps are skipped: it scales for the whole count
    d = step(d.status, 30, promote=True, **scaled(10))
    assert (d.weight, d.reason) == (100, PROMOTED) and "promoted by a person" in d.status.message
