"""The Helm chart with a real helm (hack/helm/build.sh, built from the Go module proxy): linted, rendered against
golden files (defaults, and the overrides platform teams set), its values checked by values.schema.json, and
installed as two releases into the local control plane, one in a namespace that enforces Pod Security
"restricted", where the Triton and converter pods the operator creates are admitted too."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conversion_support import converting, store
from helpers import model_deployment, operator_watching, wait_for
from localcluster import ROOT, LocalCluster, find_helm
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.kube.client import MODEL_DEPLOYMENTS, Kube
from modelyard.reconcile.model_deployment import reconcile_model_deployment

pytestmark = pytest.mark.integration
__all__ = ["store"]  # a fixture

CHART = ROOT / "charts" / "modelyard"
GOLDEN = Path(__file__).parent / "golden"
OVERRIDES = GOLDEN / "chart-overrides.values.yaml"


@pytest.fixture(scope="module")
def helm(cluster: LocalCluster) -> Helm:
    return Helm(find_helm(), cluster)


class Helm:
    def __init__(self, binary: Path, cluster: LocalCluster) -> None:
        home = cluster.workdir / "helm"
        self.binary, self.env = binary, {
            **os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), *args], env=self.env, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"helm template output differs from {path}: run with UPDATE_GOLDEN=1, review"


def test_the_chart_lints_renders_its_golden_files_and_its_schema_refuses_typos_and_wrong_types(helm: Helm) -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), "-f", str(OVERRIDES))
    defaults = helm("template", "models", str(CHART), "--namespace", "modelyard-system").stdout
    overridden = helm("template", "models", str(CHART), "--namespace", "modelyard-system", "-f",
                      str(OVERRIDES)).stdout
    golden("chart-defaults.yaml", defaults)
    golden("chart-overrides.yaml", overridden)

    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(overridden) if d}
    pod = objects[("Deployment", "ml-platform-operator")]["spec"]["template"]
    assert objects[("Deployment", "ml-platform-operator")]["spec"]["replicas"] == 3
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["serviceAccountName"] == "platform-operator"
    assert ("ServiceAccount", "platform-operator") not in objects, "serviceAccount.create=false makes none"
    assert pod["metadata"]["annotations"] == {"example.com/team": "ml-platform"}
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert "--log-level=debug" in pod["spec"]["containers"][0]["args"]
    assert {"ServiceMonitor", "PodMonitor", "PodDisruptionBudget", "Role"} <= {k for k, _ in objects}
    for d in objects.values():  # the recommended labels everywhere
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "models" and labels["helm.sh/chart"].startswith("modelyard-")
        assert labels["app.kubernetes.io/version"] and labels["app.kubernetes.io/managed-by"] == "Helm"

    # The schema: a misspelt key, a wrong type and an unknown level are refused with the key's path.
    for args, words in ((["--set", "replicaCont=3"], "replicaCont"), (["--set", "resyncSeconds=abc"], "resyncSeconds"),
                        (["--set", "logLevel=loud"], "logLevel"),
                        (["--set", "serviceAccount.annotation.x=y"], "annotation")):
        proc = helm("template", "models", str(CHART), *args, check=False)
        assert proc.returncode != 0 and words in proc.stderr, (args, proc.stderr[-1500:])


def test_two_releases_install_and_every_pod_passes_pod_security_restricted(
    cluster: LocalCluster, helm: Helm, admin: Kube, operator_kube: Kube, namespace: str, store: Path
) -> None:
    # This namespace refuses any pod that is not "restricted": the chart's operator pods, and the Triton and
    # converter pods the operator creates, must all be admitted.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    # The control: a pod that is not "restricted" is refused here.
    plain = cluster.kubectl("run", "plain", "-n", namespace, "--image=registry.k8s.io/pause:3.10", check=False)
    assert plain.returncode != 0 and "violates PodSecurity" in plain.stderr, plain.stderr
    other = f"{namespace}-b"
    cluster.kubectl("create", "namespace", other)
    on_kwok = ["--set", "nodeSelector.type=kwok"]  # kwok plays the pods: no second operator really runs here
    try:
        helm("install", "first", str(CHART), "--namespace", namespace, "--wait=false", *on_kwok)
        # A second release beside it: its cluster-scoped objects have names of their own.
        helm("install", "second", str(CHART), "--namespace", other, "--set", f"watchNamespaces[0]={other}", *on_kwok)
        for ns, release in ((namespace, "first-modelyard"), (other, "second-modelyard")):
            assert cluster.kubectl("get", "clusterrole", release, check=False).returncode == 0
            pods = wait_for(f"release {release}'s 2 operator pods to be admitted", lambda ns=ns: (
                p := json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator",
                                                "-o", "json").stdout)["items"]) and len(p) == 2 and p, timeout=60)
            assert len(pods) == 2

        # The operator's own pods in the restricted namespace: Triton's (kwok's node) and the converter's.
        cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("served", namespace)))
        cluster.kubectl("apply", "-f", "-", input=json.dumps(converting("conv", namespace, "cnn.pt")))
        for name in ("served", "conv"):
            body = admin.get(MODEL_DEPLOYMENTS, namespace, name)
            assert body is not None
            reconcile_model_deployment(operator_kube, ModelDeployment.model_validate(body))
        for what, selector in (("Triton", "modelyard.dev/deployment=served"),
                               ("converter", "batch.kubernetes.io/job-name")):
            wait_for(f"the {what} pod to be admitted", lambda s=selector: json.loads(cluster.kubectl(
                "get", "pods", "-n", namespace, "-l", s, "-o", "json").stdout)["items"] or None, timeout=60)
        refused = [e["message"] for e in json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json")
                                                    .stdout)["items"] if "violates PodSecurity" in e.get("message", "")]
        assert not refused, refused
    finally:
        helm("uninstall", "first", "--namespace", namespace, check=False)
        helm("uninstall", "second", "--namespace", other, check=False)
        cluster.kubectl("delete", "namespace", other, "--wait=false", "--ignore-not-found")


def test_a_namespaced_install_serves_its_namespace_and_can_reach_no_other(
    cluster: LocalCluster, helm: Helm, admin: Kube, namespace: str
) -> None:
    """rbac.scope namespaced: a Role per watched namespace and no ClusterRole. The operator process runs as the
    chart's own ServiceAccount (a token the API server issued for it): the watched namespace's model is served,
    the unwatched one's is not touched, no request of the operator's is refused, and the ServiceAccount can do
    nothing outside the watched namespace."""
    watched, unwatched = f"{namespace}-w", f"{namespace}-u"
    for ns in (watched, unwatched):
        cluster.kubectl("create", "namespace", ns)
    release = "scoped"
    try:
        # The chart's pods go to kwok (nothing runs them): the operator runs here as a process, with the chart's
        # identity.
        helm("install", release, str(CHART), "--namespace", namespace, "--set", "rbac.scope=namespaced",
             "--set", f"watchNamespaces[0]={watched}", "--set", "nodeSelector.type=kwok", "--set", "replicaCount=1",
             "--set", "leaderElection.enabled=false", "--set", "podDisruptionBudget.enabled=false")
        fullname = f"{release}-modelyard"
        assert cluster.kubectl("get", "clusterrole", fullname, check=False).returncode != 0, "a ClusterRole was made"
        assert cluster.kubectl("get", "role", fullname, "-n", watched, check=False).returncode == 0
        user = f"system:serviceaccount:{namespace}:{fullname}"
        for verb, what, ns, allowed in [("list", "deployments", watched, "yes"), ("patch", "services", watched, "yes"),
                                        ("get", "secrets", watched, "yes"), ("list", "secrets", watched, "no"),
                                        ("get", "deployments", unwatched, "no"), ("get", "secrets", unwatched, "no"),
                                        ("create", "jobs", unwatched, "no"), ("list", "modeldeployments.modelyard.dev",
                                                                             unwatched, "no")]:
            answer = cluster.kubectl("auth", "can-i", verb, what, "-n", ns, f"--as={user}", check=False).stdout.strip()
            assert answer == allowed, f"{user} can {verb} {what} in {ns}: {answer}, should be {allowed}"

        token = cluster.kubectl("create", "token", fullname, "-n", namespace, "--duration=1h").stdout.strip()
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        config["users"] = [{"name": fullname, "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = fullname
        kubeconfig = cluster.workdir / f"{fullname}.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        for ns in (watched, unwatched):
            cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("scoped", ns)))
        mark = len(cluster.audit_events())
        log = cluster.workdir / "logs" / f"operator-{fullname}.log"
        with operator_watching(kubeconfig, watched, log) as proc:
            wait_for("the watched namespace's model to be Ready", lambda: cluster.kubectl(
                "get", "mdep", "-n", watched, "scoped", "-o", "jsonpath={.status.conditions[0].status}",
                check=False).stdout == "True", timeout=90)
            time.sleep(3)  # a few resyncs
            assert proc.poll() is None, log.read_text()[-3000:]
        untouched = admin.get(MODEL_DEPLOYMENTS, unwatched, "scoped") or {}
        assert untouched.get("status") == {"observedGeneration": 0}, untouched.get("status")
        events = [e for e in cluster.audit_events()[mark:] if e.get("user", {}).get("username") == user]
        assert events, "the audit log shows no request of the ServiceAccount's"
        refused = sorted({f"{e['verb']} {e['requestURI'].split('?')[0]}" for e in events
                          if e.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid"})
        assert not refused, f"requests refused under the namespaced Role: {refused}"
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        helm("uninstall", release, "--namespace", namespace, check=False)
        for ns in (watched, unwatched):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
