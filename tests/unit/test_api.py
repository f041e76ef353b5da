"""Spec parsing, revision hashing and the condition helper."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from modelyard.api.names import revision_of
from modelyard.api.v1alpha1 import ModelDeploymentSpec
from modelyard.status.conditions import set_condition, transitions


def spec(**serving: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"model": {"uri": "s3://bucket/model", "format": "onnx"}, "serving": serving}
    )


def test_defaults() -> None:
    s = spec()
    assert (s.serving.gpus, s.fixed_replicas, s.serving.max_batch_size) == (1, 1, 8)
    # Unset rather than 1, so that CEL can tell a replica count someone wrote from none (scaling excludes it).
    assert s.serving.replicas is None
    assert s.serving.gpu_resource_name == "nvidia.com/gpu"
    assert s.serving.dynamic_batching.enabled


def test_unknown_fields_are_rejected_locally() -> None:
    with pytest.raises(ValidationError, match="gpu"):
        spec(gpu=2)


def test_revision_is_stable_and_ignores_replicas() -> None:
    assert revision_of(spec()) == revision_of(spec())
    assert revision_of(spec(replicas=5)) == revision_of(spec(replicas=1))
    # Pinned: a change here rolls every deployed model to a new revision on upgrade.
    assert revision_of(spec()) == "30508d4d9d"


@pytest.mark.parametrize(
    "change",
    [{"image": "nvcr.io/nvidia/tritonserver:24.12-py3"}, {"gpus": 2}, {"maxBatchSize": 16},
     {"instanceCount": 2}, {"nodeSelector": {"pool": "a100"}}],
)
def test_revision_changes_with_what_is_served(change: dict[str, Any]) -> None:
    assert revision_of(spec(**change)) != revision_of(spec())


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    t1, t2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    first = set_condition([], "Ready", False, "Progressing", "0/1", 1, clock=lambda: t1)
    second = set_condition(first, "Ready", False, "Unschedulable", "no node", 2, clock=lambda: t2)
    assert second[0].last_transition_time == "2026-01-01T00:00:00Z"
    assert (second[0].reason, second[0].observed_generation) == ("Unschedulable", 2)
    third = set_condition(second, "Ready", True, "Available", "1/1", 2, clock=lambda: t2)
    assert third[0].last_transition_time == "2026-01-02T00:00:00Z"
    assert [c.reason for c in transitions(first, second)] == ["Unschedulable"]
    assert transitions(third, third) == []
