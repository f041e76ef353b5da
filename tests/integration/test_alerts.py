"""docs/monitoring/alerts.yaml: a real Prometheus (the local cluster's) parses every expression, and every
modelyard_* series the rules read is one the operator exports."""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

import modelyard.handlers.model_deployment  # noqa: F401  (registers the operator's metrics, as it runs)
from localcluster import ROOT, LocalCluster

pytestmark = pytest.mark.integration

RULES = ROOT / "docs" / "monitoring" / "alerts.yaml"


def test_every_alert_parses_on_prometheus_and_reads_metrics_the_operator_exports(cluster: LocalCluster) -> None:
    rules = [r for g in yaml.safe_load(Path(RULES).read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"ModelyardModelNotReady", "ModelyardReconcileErrors", "ModelyardNoLeader",
                                           "ModelyardCanaryRolledBack", "ModelyardTritonQueueing",
                                           "ModelyardQueueStalled"}
    exported = generate_latest(REGISTRY).decode()
    for rule in rules:
        assert rule.get("annotations", {}).get("summary") and rule.get("labels", {}).get("severity"), rule
        try:
            cluster.prometheus_query(rule["expr"])
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{rule['alert']}: Prometheus refused the expression: {exc.read()[:500]!r}") from None
        for name in set(re.findall(r"\bmodelyard_[a-z_]+", rule["expr"])):
            family = {name, re.sub(r"_(total|bucket|sum|count)$", "", name)}  # counters are typed with _total
            assert any(f"# TYPE {f} " in exported for f in family), (
                f"{rule['alert']} reads {name}, which the operator does not export")
