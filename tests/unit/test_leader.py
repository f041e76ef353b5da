"""The leader election's decisions (modelyard.kube.leader) as a table; tests/integration/test_leader_election.py
runs two operator processes on a real Lease."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from modelyard.kube.client import REQUEST_TIMEOUT, Kube
from modelyard.kube.leader import LeaderElector, Timing, held_by, may_take

NOW = datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize(("spec", "unchanged_for", "may"), [
    ({}, 0, True),  # nobody holds it
    ({"holderIdentity": ""}, 0, True),  # released
    ({"holderIdentity": "me"}, 0, True),  # mine: renew
    ({"holderIdentity": "other", "leaseDurationSeconds": 15}, 14.9, False),  # the holder may still renew
    ({"holderIdentity": "other", "leaseDurationSeconds": 15}, 15, True),  # silent for its whole duration
    ({"holderIdentity": "other", "leaseDurationSeconds": 60}, 30, False),  # the holder's duration counts, not ours
    ({"holderIdentity": "other"}, 15, True),  # no duration recorded: ours
])
def test_may_take(spec: dict[str, Any], unchanged_for: float, may: bool) -> None:
    assert may_take(spec, "me", unchanged_for, 15) is may


def test_taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() -> None:
    taken = held_by({"holderIdentity": "other", "acquireTime": "x", "leaseTransitions": 3}, "me", NOW, 15)
    assert taken == {"holderIdentity": "me", "leaseDurationSeconds": 15, "acquireTime": "2026-01-01T12:00:00.250000Z",
                     "renewTime": "2026-01-01T12:00:00.250000Z", "leaseTransitions": 4}
    renewed = held_by({**taken, "renewTime": "earlier"}, "me", NOW.replace(second=2), 15)
    assert (renewed["acquireTime"], renewed["renewTime"], renewed["leaseTransitions"]) == (
        "2026-01-01T12:00:00.250000Z", "2026-01-01T12:00:02.250000Z", 4)
    # The first holder of a new Lease is no transition; taking a released one is.
    assert held_by({}, "me", NOW, 15)["leaseTransitions"] == 0
    assert held_by({"holderIdentity": "", "leaseTransitions": 4}, "me", NOW, 15)["leaseTransitions"] == 5


def test_the_elections_calls_give_up_within_half_the_renew_deadline_and_the_reconciles_keep_theirs() -> None:
    kube = Kube(client.ApiClient())
    elector = LeaderElector(kube, "ns", "lease", on_started=lambda: None, on_lost=lambda: None,
                            timing=Timing(renew_deadline=10.0))
    assert elector.kube.request_timeout == (5.0, 5.0)  # two calls a try: within the deadline, before 15 s
    assert kube.request_timeout == REQUEST_TIMEOUT == (10.0, 60.0)
    assert elector.kube.api is kube.api
