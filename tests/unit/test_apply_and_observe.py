"""Deciding whether to apply, and reading a revision's state off its children."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelyard.kube.apply import contains, needs_apply, with_config_hash
from modelyard.status.revision import observe_revision

DESIRED: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "m-1", "namespace": "ns", "labels": {"a": "b"}},
    "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "resources": {
        "limits": {"cpu": "0.5", "memory": "1Gi"}}}]}}},
}


def live_from(desired: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: our fields, defaults, and canonical quantities."""
    live = with_config_hash(desired)
    live["metadata"]["uid"] = "u"
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["cpu"] = "500m"
    container["terminationMessagePath"] = "/dev/termination-log"
    return live


def test_unchanged_object_is_not_applied() -> None:
    assert not needs_apply(live_from(DESIRED), DESIRED)


def test_missing_object_is_applied() -> None:
    assert needs_apply(None, DESIRED)


def test_drift_in_an_owned_field_is_applied() -> None:
    live = live_from(DESIRED)
    live["spec"]["replicas"] = 5
    assert needs_apply(live, DESIRED)


def test_a_removed_field_changes_the_hash() -> None:
    smaller = {**DESIRED, "metadata": {**DESIRED["metadata"], "labels": {}}}
    assert needs_apply(live_from(DESIRED), smaller)


def test_contains_compares_lists_item_by_item() -> None:
    assert contains([{"a": 1, "x": 2}], [{"a": 1}])
    assert not contains([{"a": 1}, {"a": 2}], [{"a": 1}])
    assert not contains({"a": "http"}, {"a": "grpc"})


def deployment(ready: int, replicas: int = 2, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": replicas,
                   "readyReplicas": ready, "availableReplicas": ready},
    }


def test_available_revision() -> None:
    state = observe_revision("r", deployment(2), [], 2)
    assert state.available and state.reason == "Available" and state.message == "2/2 replicas ready"


def test_stale_deployment_status_is_not_available() -> None:
    assert not observe_revision("r", deployment(2, generation=2, observed=1), [], 2).available


def test_unschedulable_pod_gives_the_scheduler_message() -> None:
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                      "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}}
    state = observe_revision("r", deployment(0), [pod], 2)
    assert state.reason == "Unschedulable"
    assert "3 Insufficient nvidia.com/gpu" in state.message


def test_the_deployments_progress_deadline_ends_the_wait_for_a_pod_that_cannot_be_scheduled() -> None:
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                      "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}}
    gave_up = deployment(0)
    gave_up["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                        "message": 'ReplicaSet "m-r-5d4" has timed out progressing.'}]
    state = observe_revision("r", gave_up, [pod], 2)
    assert state.reason == "ProgressDeadlineExceeded"
    assert state.message == ('0/2 replicas ready; ReplicaSet "m-r-5d4" has timed out progressing.; 0/3 nodes are '
                             'available: 3 Insufficient nvidia.com/gpu.'), state.message


def test_waiting_container_reason_is_surfaced() -> None:
    pod = {"status": {"containerStatuses": [{"name": "triton", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}}
    state = observe_revision("r", deployment(0), [pod], 2)
    assert state.reason == "ImagePullBackOff"
    assert state.message == "0/2 replicas ready; container triton: Back-off pulling image"


def test_an_exited_container_is_reported_with_its_exit_code_and_last_words() -> None:
    terminated = {"exitCode": 137, "reason": "Error", "finishedAt": "2026-01-01T00:00:00Z", "message": "killed"}
    pod = {"metadata": {"name": "m-r-1"}, "status": {"containerStatuses": [
        {"name": "triton", "ready": False, "restartCount": 0, "state": {"terminated": terminated}}]}}
    state = observe_revision("r", deployment(0), [pod], 1)
    assert state.reason == "ContainerTerminated"
    assert state.message == ("0/2 replicas ready; container triton of pod m-r-1 exited with code 137 (Error) at "
                             "2026-01-01T00:00:00Z: killed")
    pod["status"]["containerStatuses"][0].update(  # type: ignore[index]
        {"state": {"running": {}}, "lastState": {"terminated": terminated}, "restartCount": 1})
    state = observe_revision("r", deployment(0), [pod], 1)
    assert state.reason == "ContainerRestarted"
    assert "restarted (1 restarts) after it exited with code 137 (Error)" in state.message
    pod["status"]["containerStatuses"][0]["ready"] = True  # type: ignore[index]
    assert observe_revision("r", deployment(0), [pod], 1).reason == "Progressing"


def test_an_llm_pod_whose_weights_do_not_verify_says_what_differs() -> None:
    refused = {"exitCode": 1, "reason": "Error", "message": json.dumps({
        "ok": False, "reason": "WeightsUnverified",
        "message": "the staged weights under weights/ab are not what was staged and gated: x has sha256 1"})}
    pod = {"metadata": {"name": "m-r-1"}, "status": {
        "initContainerStatuses": [{"name": "weights", "restartCount": 2, "state": {"waiting": {
            "reason": "CrashLoopBackOff", "message": "back-off 20s"}}, "lastState": {"terminated": refused}}],
        "containerStatuses": [{"name": "triton", "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    state = observe_revision("r", deployment(0), [pod], 1)
    assert state.reason == "WeightsUnverified"
    assert state.message == ("0/2 replicas ready; pod m-r-1: the staged weights under weights/ab are not what was "
                             "staged and gated: x has sha256 1")
    # Killed before it wrote its result: the tail of its log, still with the weights' reason.
    pod["status"]["initContainerStatuses"][0]["lastState"] = {  # type: ignore[index]
        "terminated": {"exitCode": 137, "message": "MemoryError"}}
    state = observe_revision("r", deployment(0), [pod], 1)
    assert state.reason == "WeightsUnverified" and "not verified: MemoryError" in state.message
    # Verified: the init container completed, the pod initialises as any other.
    pod["status"]["initContainerStatuses"][0] = {"name": "weights", "state": {"terminated": {"exitCode": 0}}}
    assert observe_revision("r", deployment(0), [pod], 1).reason == "Progressing"


def test_a_converter_pod_that_cannot_run_says_why_at_once() -> None:
    from modelyard.status.conversion import observe_conversion

    job = {"metadata": {"name": "m-r-convert"}, "status": {"active": 1}}
    unschedulable = {"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": '0/4 nodes are available: persistentvolumeclaim "model-store" not found.'}]}}
    state = observe_conversion(job, [unschedulable])
    assert (state.done, state.failed, state.reason) == (False, False, "Unschedulable")
    assert 'persistentvolumeclaim "model-store" not found' in state.message and "m-r-convert" in state.message
    pulling = {"status": {"containerStatuses": [{"name": "converter", "state": {"waiting": {
        "reason": "ErrImagePull", "message": "pull access denied"}}}]}}
    assert observe_conversion(job, [pulling]).reason == "ErrImagePull"
    running = {"status": {"containerStatuses": [{"name": "converter", "state": {"running": {}}}]}}
    assert observe_conversion(job, [running]).reason == "Converting"


@pytest.mark.parametrize(("status", "body", "refused"), [
    (422, "Deployment.apps is invalid", True),
    (400, "bad request", True),
    (403, "forbidden", True),
    (404, "not found", False),
    (409, "conflict", False),
    (429, "too many requests", False),
    (500, "failed to create typed patch object (...): .spec.template.spec.affinity.x: field not declared in schema",
     True),
    (500, "etcdserver: request timed out", False),
    (503, "the server is currently unable to handle the request", False),
])
def test_which_refusals_no_retry_heals(status: int, body: str, refused: bool) -> None:
    from kubernetes.client import ApiException

    from modelyard.reconcile.model_deployment import _refused

    exc = ApiException(status=status, reason="x")
    exc.body = body
    assert _refused(exc) is refused
