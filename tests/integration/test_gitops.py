"""Integration: what Flux and Argo CD conclude about live ModelDeployments, computed by their own code: the kstatus
library (Flux's fork of cli-utils) and the chart's health.lua run by gopher-lua as Argo CD runs it, both in
hack/gitops (built from the Go module proxy). Pods are kwok's; the states are the ones a user meets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import Verdict, model_deployment, wait_for
from helpers import gitops_verdicts as verdicts
from localcluster import LocalCluster, find_gitops_check
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.kube.client import MODEL_DEPLOYMENTS, Kube
from modelyard.reconcile.model_deployment import reconcile_model_deployment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gitops_check() -> Path:
    return find_gitops_check()


def apply(cluster: LocalCluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def settle(admin: Kube, operator: Kube, namespace: str, name: str, check: Path,
           until: Callable[[Verdict], bool], what: str) -> Verdict:
    """Reconcile (as the operator does on every event) until the tools' verdict is `until`'s."""
    last: list[Verdict] = []

    def probe() -> Verdict | None:
        body = admin.get(MODEL_DEPLOYMENTS, namespace, name)
        assert body is not None
        reconcile_model_deployment(operator, ModelDeployment.model_validate(body))
        last[:] = [verdicts(check, admin.get(MODEL_DEPLOYMENTS, namespace, name) or {})]
        return last[0] if until(last[0]) else None

    try:
        return wait_for(what, probe, timeout=120, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last}") from None


def test_flux_and_argo_cd_follow_a_model_from_applied_to_ready_and_see_a_refusal_as_failed(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str, gitops_check: Path
) -> None:
    # Applied, the operator not there yet: in progress, not Current (the CRD defaults status.observedGeneration to
    # 0, so kstatus sees a generation nobody observed).
    apply(cluster, model_deployment("resnet", namespace))
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "resnet") or {}
    assert body["status"] == {"observedGeneration": 0}, body.get("status")
    (k, k_msg), (argo, argo_msg) = verdicts(gitops_check, body)
    assert (k, argo) == ("InProgress", "Progressing"), (k_msg, argo_msg)
    assert "latest observed generation is 0" in k_msg and "observe generation 1" in argo_msg

    # Served: Current and Healthy.
    (k, _), (argo, argo_msg) = settle(admin, operator_kube, namespace, "resnet", gitops_check,
                                      lambda v: v[0][0] == "Current", "the served model to be Current")
    assert argo == "Healthy" and argo_msg.startswith("Available: revision "), argo_msg

    # A change that cannot be scheduled yet: the new revision is work under way (capacity may come; the
    # Deployment's progress deadline ends the wait as Stalled), while the old revision keeps serving.
    changed = model_deployment("resnet", namespace, gpus=16)
    apply(cluster, changed)
    (k, k_msg), (argo, argo_msg) = settle(
        admin, operator_kube, namespace, "resnet", gitops_check,
        lambda v: "Unschedulable" in v[1][1], "the unschedulable revision to be reported")
    assert (k, argo) == ("InProgress", "Progressing"), (k_msg, argo_msg)
    assert "Insufficient nvidia.com/gpu" in argo_msg and "keeps serving" in argo_msg, argo_msg

    # The wait ends at the Deployment's progress deadline: the deployment controller marks it
    # ProgressDeadlineExceeded and no retry heals that, so Failed and Degraded, while the old revision keeps
    # serving. The operator renders 900 s; the test shortens it on the live Deployment (a field the operator does
    # not apply again while its rendering is unchanged) so that the real controller passes it within the test.
    latest = (admin.get(MODEL_DEPLOYMENTS, namespace, "resnet") or {})["status"]["revisions"]["latest"]["name"]
    cluster.kubectl("patch", "deployment", f"resnet-{latest}", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"progressDeadlineSeconds": 1}}))
    (k, k_msg), (argo, argo_msg) = settle(
        admin, operator_kube, namespace, "resnet", gitops_check,
        lambda v: v[0][0] != "InProgress", "the passed progress deadline to be reported")
    assert (k, argo) == ("Failed", "Degraded"), (k_msg, argo_msg)
    assert argo_msg.startswith("ProgressDeadlineExceeded: ") and "keeps serving" in argo_msg, argo_msg
    assert "has timed out progressing" in k_msg and "Insufficient nvidia.com/gpu" in k_msg, k_msg

    # Refused: a Service of the model's name that is not the operator's. No retry heals it: Failed and Degraded,
    # with the reason and what to do.
    cluster.kubectl("create", "service", "clusterip", "taken", "--tcp=8000:8000", "-n", namespace)
    apply(cluster, model_deployment("taken", namespace))
    (k, k_msg), (argo, argo_msg) = settle(admin, operator_kube, namespace, "taken", gitops_check,
                                          lambda v: v[0][0] != "InProgress", "the refusal to be reported")
    assert (k, argo) == ("Failed", "Degraded"), (k_msg, argo_msg)
    assert "is not owned by this ModelDeployment" in k_msg and argo_msg.startswith("NameConflict: "), argo_msg
    # Healed by a person (the Service goes): the same model becomes Current without a spec change.
    cluster.kubectl("delete", "service", "taken", "-n", namespace)
    settle(admin, operator_kube, namespace, "taken", gitops_check,
           lambda v: (v[0][0], v[1][0]) == ("Current", "Healthy"), "the healed model to be Current and Healthy")
