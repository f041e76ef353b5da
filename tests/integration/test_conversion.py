"""Integration: the conversion stage against the real API server. The converter pod runs for real on the process
kubelet's node (its own args, env and volumes; the result comes back as its termination message); Triton's pods
go to kwok's CPU node here (the e2e tier serves with a real Triton).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from conversion_support import ON_PROCESS_NODE, condition, converting, store
from helpers import ready_condition, wait_for
from localcluster import LocalCluster
from modelyard.api.names import LABEL_REVISION
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.kube.client import DEPLOYMENTS, JOBS, MODEL_DEPLOYMENTS, SERVICES, Kube
from modelyard.reconcile.model_deployment import Outcome, reconcile_model_deployment

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]
__all__ = ["store"]  # fixtures
warnings.filterwarnings("ignore")

def reconcile(admin: Kube, operator: Kube, namespace: str, name: str) -> Outcome:
    """Without a drain period: a replaced revision (and its conversion Job) goes as soon as the new one serves
    (the drain itself is tested in test_model_deployment_api)."""
    body = admin.get(MODEL_DEPLOYMENTS, namespace, name)
    assert body is not None
    return reconcile_model_deployment(operator, ModelDeployment.model_validate(body), drain_seconds=0)


def test_converted_validated_then_ready_and_a_bad_model_leaves_the_serving_revision(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str, store: Path
) -> None:
    manifest = converting("conv", namespace, "cnn.pt")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    # 1. A Job, and nothing to serve yet.
    first = reconcile(admin, operator_kube, namespace, "conv").revision
    job = admin.get(JOBS, namespace, f"conv-{first}-convert")
    assert job is not None and job["spec"]["template"]["spec"]["nodeSelector"] == ON_PROCESS_NODE["nodeSelector"]
    assert admin.get(DEPLOYMENTS, namespace, f"conv-{first}") is None
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "conv")
    assert body is not None
    assert (condition(body, "Converted")["status"], condition(body, "Converted")["reason"]) == ("Unknown", "Converting")
    assert ready_condition(body)["reason"] == "Converting"  # type: ignore[index]

    # 2. The converter runs on the process node: Converted, Validated, then Triton pods, then Ready.
    def ready() -> Outcome | None:
        outcome = reconcile(admin, operator_kube, namespace, "conv")
        return outcome if outcome.ready else None

    try:
        wait_for("the converted revision to be Ready", ready, timeout=300, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.container_logs(namespace)}") from None
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "conv")
    assert body is not None
    converted, validated = condition(body, "Converted"), condition(body, "Validated")
    assert (converted["status"], converted["reason"]) == ("True", "Converted")
    assert "conv/1/model.onnx sha256:" in converted["message"]
    assert (validated["status"], validated["reason"]) == ("True", "Validated")
    # fp16, judged element by element against the output's spread (no classifier output declared: no top-1)
    assert "128 samples: max abs error" in validated["message"] and "atol 0.02 x spread" in validated["message"]
    repository = body["status"]["revisions"]["latest"]["modelRepository"]
    key = repository.rsplit("/", 1)[-1]
    assert repository == f"pvc://model-store/converted/{key}"
    assert (store / "converted" / key / "conv" / "config.pbtxt").is_file()
    deployment = admin.get(DEPLOYMENTS, namespace, f"conv-{first}")
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--model-repository=/models/converted/{key}" in args

    # 3. A model that outputs NaN: Validated=False with the reason, and the first revision keeps serving.
    manifest["spec"]["model"]["uri"] = "pvc://model-store/sources/nan.pt"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    second = reconcile(admin, operator_kube, namespace, "conv").revision
    assert second != first

    def rejected() -> dict[str, Any] | None:
        reconcile(admin, operator_kube, namespace, "conv")
        b = admin.get(MODEL_DEPLOYMENTS, namespace, "conv") or {}
        return b if condition(b, "Validated")["status"] == "False" else None

    body = wait_for("Validated=False", rejected, timeout=300, interval=1)
    validated = condition(body, "Validated")
    assert validated["reason"] == "ValidationFailed" and "NaN/Inf" in validated["message"]
    ready_cond = ready_condition(body)
    assert ready_cond is not None and ready_cond["status"] == "False" and ready_cond["reason"] == "ValidationFailed"
    assert f"revision {first} keeps serving" in ready_cond["message"]
    assert body["status"]["revisions"]["stable"]["name"] == first
    assert body["status"]["revisions"]["stable"]["modelRepository"] == repository
    service = admin.get(SERVICES, namespace, "conv")
    assert service is not None and service["spec"]["selector"][LABEL_REVISION] == first
    assert admin.get(DEPLOYMENTS, namespace, f"conv-{first}") is not None
    assert admin.get(DEPLOYMENTS, namespace, f"conv-{second}") is None
    # Nothing changes on a resync while the bad revision stays rejected.
    assert reconcile(admin, operator_kube, namespace, "conv").writes == 0

    # 4. The conversion section removed: the model is served from the source location as it is, the
    #    conversion conditions go, and so do the conversion Jobs once the new revision serves.
    del manifest["spec"]["conversion"]
    manifest["spec"]["model"]["uri"] = "pvc://model-store/converted"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_for("the unconverted revision to be Ready", ready)
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "conv")
    assert body is not None
    assert {c["type"] for c in body["status"]["conditions"]} == {"Ready"}
    reconcile(admin, operator_kube, namespace, "conv")
    assert admin.list_by_labels(JOBS, namespace, {"modelyard.dev/deployment": "conv"}) == []


def test_a_converter_pod_that_cannot_be_scheduled_is_reported_at_once(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    """No PVC `model-store` in this namespace: the scheduler cannot place the converter pod, and the conditions
    say so with the scheduler's words, not "running the converter" until the Job's deadline."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(converting("nopvc", namespace, "cnn.pt")))

    def unschedulable() -> dict[str, Any] | None:
        reconcile(admin, operator_kube, namespace, "nopvc")
        cond = ready_condition(admin.get(MODEL_DEPLOYMENTS, namespace, "nopvc") or {})
        return cond if cond and cond["reason"] == "Unschedulable" else None

    cond = wait_for("Ready=False with reason Unschedulable", unschedulable, timeout=60, interval=1)
    assert cond["status"] == "False" and "model-store" in cond["message"] and "converter pod" in cond["message"], cond
    converted = condition(admin.get(MODEL_DEPLOYMENTS, namespace, "nopvc") or {}, "Converted")
    assert (converted["status"], converted["reason"]) == ("Unknown", "Unschedulable"), converted


def test_a_model_class_the_administrator_does_not_allow_gets_no_job(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    """conversion.modelClass is checked before any Job: a module of the standard library (or one outside
    converter.allowedModules) is a condition with its reason, and no pod ever runs it."""
    manifest = converting("evil", namespace, "cnn.pth")
    manifest["spec"]["model"]["format"] = "pytorch"
    manifest["spec"]["conversion"]["modelClass"] = "os:system"
    manifest["spec"]["conversion"]["modelClassArgs"] = {"command": "touch /tmp/pwned"}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    outcome = reconcile(admin, operator_kube, namespace, "evil")
    cond = ready_condition(admin.get(MODEL_DEPLOYMENTS, namespace, "evil") or {})
    assert (outcome.reason, cond["status"], cond["reason"]) == ("ModuleNotAllowed", "False", "ModuleNotAllowed"), cond
    assert "os:system" in cond["message"] and "standard library" in cond["message"]
    assert admin.list_by_labels(JOBS, namespace, {"modelyard.dev/deployment": "evil"}) == []
    assert reconcile(admin, operator_kube, namespace, "evil").writes == 0  # and nothing on a resync
