"""E2E: the operator process drives a conversion: Job, result, Converted -> Validated -> Ready."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from conversion_support import condition, converter_node, converting, play_kubelet, store
from helpers import wait_for
from localcluster import LocalCluster
from modelyard.kube.client import JOBS, MODEL_DEPLOYMENTS, Kube

from .conftest import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore")]
__all__ = ["converter_node", "store"]  # fixtures
warnings.filterwarnings("ignore")


def test_operator_converts_validates_and_serves(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, store: Path,
    converter_node: str,
) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(converting("conv", namespace, "cnn.pt")))

    def job() -> dict[str, Any] | None:
        jobs = admin.list_by_labels(JOBS, namespace, {"modelyard.dev/deployment": "conv"})
        return jobs[0] if jobs else None

    created = wait_for("the operator to create the conversion Job", job)
    assert play_kubelet(cluster, admin, namespace, created["metadata"]["name"], store) == 0
    proc = cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "mdep/conv", "--timeout=120s",
                           check=False)
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "conv") or {}
    assert proc.returncode == 0, f"{proc.stderr}\n{json.dumps(body.get('status'), indent=1)}"
    assert condition(body, "Converted")["status"] == "True"
    assert condition(body, "Validated")["status"] == "True"
    assert "max abs error" in condition(body, "Validated")["message"]
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "conv"}
    assert {"Converting", "Converted", "Validated", "Available"} <= reasons, reasons
    operator_process.assert_running()
