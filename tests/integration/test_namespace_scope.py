"""An operator told to watch one namespace never reads, reconciles or writes another: not on a watch event, not on
the periodic resync. The operator process runs here (this tier runs no other operator), with the chart's RBAC."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from helpers import model_deployment, operator_watching, wait_for
from localcluster import LocalCluster
from modelyard.kube.client import DEPLOYMENTS, MODEL_DEPLOYMENTS, Kube

pytestmark = pytest.mark.integration


def test_an_operator_watching_one_namespace_leaves_the_others_alone(
    cluster: LocalCluster, admin: Kube, namespace: str
) -> None:
    other = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", other)
    try:
        for ns in (namespace, other):
            cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("scoped", ns)))
        mark = len(cluster.audit_events())
        log = cluster.workdir / "logs" / f"operator-{namespace}.log"
        with operator_watching(cluster.operator_kubeconfig, namespace, log) as proc:
            wait_for("the watched model to be Ready", lambda: cluster.kubectl(
                "get", "mdep", "-n", namespace, "scoped", "-o", "jsonpath={.status.conditions[0].status}",
                check=False).stdout == "True", timeout=90)
            time.sleep(4)  # several resyncs
            assert proc.poll() is None, log.read_text()[-3000:]
        untouched = admin.get(MODEL_DEPLOYMENTS, other, "scoped") or {}
        # Only the CRD's default (observedGeneration 0: nobody has reported on it), no word of the operator's.
        assert untouched.get("status") == {"observedGeneration": 0}, untouched.get("status")
        assert admin.list_by_labels(DEPLOYMENTS, other, {"modelyard.dev/deployment": "scoped"}) == []
        requests = [e["requestURI"] for e in cluster.audit_events()[mark:]
                    if e.get("user", {}).get("username") == "modelyard-operator"]
        assert any(f"/namespaces/{namespace}/" in uri for uri in requests), "the audit log shows no work at all"
        # Nothing in the other namespace, and no cluster-wide read of anything the operator manages (discovery,
        # CRDs and kopf's look at the namespace list are not objects of anyone's).
        managed = re.compile(r"^/apis?(/[^/?]+)?/v[^/?]+/(modeldeployments|deployments|jobs|pods|services|httproutes"
                             r"|events|scaledobjects|horizontalpodautoscalers)")
        strays = [uri for uri in requests if f"/namespaces/{other}" in uri or managed.match(uri)]
        assert strays == [], strays
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", "--ignore-not-found")
