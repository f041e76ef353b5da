"""E2E: canary rollouts on live traffic. The operator process, real Triton servers (python-backend models that
answer who they are, or fail, answer slowly, or crash the server), Traefik as the Gateway API implementation,
Prometheus scraping it, and a bounded load generator sending inferences through the gateway the whole time."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from canary.load import Answer, Load
from canary.scenario import INTERVAL, NAME, STEPS, manifest, provision_models
from helpers import gitops_verdicts, wait_for
from localcluster import LocalCluster, find_gitops_check
from modelyard.kube.client import DEPLOYMENTS, HTTP_ROUTES, MODEL_DEPLOYMENTS, SERVICES, Kube
from modelyard.measure.promql import Backend, traefik_service

from .conftest import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.triton]


@pytest.fixture
def models(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Path:
    provision_models(cluster, namespace, tmp_path)
    return tmp_path


def body(admin: Kube, namespace: str) -> dict[str, Any]:
    return admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {}


def condition(b: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in b.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def events(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return sorted((e for e in items if e["involvedObject"]["name"] == NAME),
                  key=lambda e: e.get("eventTime") or e.get("firstTimestamp") or "")


def diagnose(cluster: LocalCluster, admin: Kube, namespace: str, op: OperatorProcess) -> str:
    b = body(admin, namespace)
    progressing = condition(b, "Progressing")
    status = f"Progressing: {progressing.get('reason')}: {progressing.get('message')}\n" + json.dumps(
        b.get("status"), indent=1)
    notes = "\n".join(f"{e['reason']}: {e.get('message') or e.get('note')}" for e in events(cluster, namespace))
    return f"status: {status}\nevents:\n{notes}\noperator:\n{op.log_tail(3000)}\noperator's work: {op.work_state()}\n" \
        f"{cluster.container_logs(namespace)}"


def serving_stable(cluster: LocalCluster, admin: Kube, namespace: str, op: OperatorProcess, identity: str,
                   load: Load) -> str:
    """Deploy the first revision (no canary: nothing serves yet) and wait until the gateway answers from it."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, identity)))

    def answering() -> str | None:
        b = body(admin, namespace)
        stable = (b.get("status", {}).get("revisions") or {}).get("stable") or {}
        return stable.get("name") if load.ask().who == identity and condition(b, "Ready").get("status") == "True" \
            else None

    try:
        return wait_for(f"revision {identity} to serve through the gateway", answering, timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, op)}") from None


def roll_to(cluster: LocalCluster, namespace: str, identity: str, **kw: Any) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, identity, **kw)))


def rollout_phase(admin: Kube, namespace: str, phase: str) -> Any:
    def probe() -> dict[str, Any] | None:
        r = body(admin, namespace).get("status", {}).get("rollout") or {}
        return r if r.get("phase") == phase else None
    return probe


def stable_5xx(cluster: LocalCluster, namespace: str, stable_revision: str) -> float:
    """5xx answers the gateway counted for the stable revision's backend over the last 10 minutes."""
    service = traefik_service(Backend(namespace, f"{NAME}-{stable_revision}", 8000, stable_revision))
    result = cluster.prometheus_query(
        f'sum(increase(traefik_service_requests_total{{service="{service}",code=~"5.."}}[10m]))')
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def load(cluster: LocalCluster, namespace: str) -> Iterator[Load]:
    generator = Load(cluster.gateway_url, f"{NAME}.{namespace}.local", rate=20, workers=32)
    yield generator
    generator.stop()


def test_a_good_canary_walks_every_step_under_load_and_is_promoted(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, models: Path, load: Load,
) -> None:
    stable = serving_stable(cluster, admin, namespace, operator_process, "v1", load)
    load.start()
    started = time.time()
    roll_to(cluster, namespace, "v2")

    # -o wide shows the canary and its weight while it rolls out.
    def wide_shows_weight() -> str | None:
        out = cluster.kubectl("get", "mdep", "-n", namespace, NAME, "-o", "wide").stdout
        return out if "Progressing" in out and any(f" {s['setWeight']} " in out for s in STEPS) else None
    wide = wait_for("kubectl get -o wide to show the canary at a weight", wide_shows_weight, timeout=120, interval=1)
    assert "CANARY" in wide and "WEIGHT" in wide, wide

    try:
        promoted = wait_for("the canary to be promoted", rollout_phase(admin, namespace, "Promoted"), timeout=240,
                            interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, operator_process)}") from None
    canary = promoted["canary"]

    def old_gone() -> bool:
        deployments = admin.list_by_labels(DEPLOYMENTS, namespace, {"modelyard.dev/deployment": NAME})
        services = admin.list_by_labels(SERVICES, namespace, {"modelyard.dev/deployment": NAME,
                                                              "modelyard.dev/revision": stable})
        return [d["metadata"]["name"] for d in deployments] == [f"{NAME}-{canary}"] and not services
    wait_for("the old revision to be removed after the drain", old_gone, timeout=60, interval=1)
    time.sleep(2)  # a few more answers from the new revision alone
    answers = load.stop()

    b = body(admin, namespace)
    assert b["status"]["revisions"]["stable"]["name"] == canary and "rollout" not in b["status"], b["status"]
    assert condition(b, "Ready")["status"] == "True"
    assert condition(b, "Progressing")["reason"] == "RolloutComplete", condition(b, "Progressing")
    route = admin.get(HTTP_ROUTES, namespace, NAME) or {}
    assert [r["name"] for r in route["spec"]["rules"][0]["backendRefs"]] == [f"{NAME}-{canary}"], route

    during = [a for a in answers if a.at >= started]
    failed = [a for a in during if a.status != 200]
    by_who = Counter(a.who for a in during)
    assert not failed, f"{len(failed)} of {len(during)} requests failed during the rollout: {failed[:5]}"
    assert by_who["v1"] > 0 and by_who["v2"] > 0 and set(by_who) == {"v1", "v2"}, by_who
    assert all(a.who == "v2" for a in answers[-10:]), answers[-10:]

    # An event at every step, with the numbers it was judged on.
    notes = [(e["reason"], e.get("note") or e.get("message") or "") for e in events(cluster, namespace)]
    progress = [n for r, n in notes if r == "CanaryProgressing"]
    assert any("weight 20%: success-rate 100 >= 99%" in n and "requests" in n and "latency-p99" in n
               for n in progress), notes
    assert any("step 2/2: weight 50%" in n for n in progress), notes
    assert any(r == "CanaryPromoted" and f"revision {canary} promoted: all 2 steps passed" in n for r, n in notes)
    # The operator's own metrics count the rollout's events.
    with urllib.request.urlopen(f"http://127.0.0.1:{operator_process.env['MODELYARD_METRICS_PORT']}/metrics") as r:
        metrics = r.read().decode()
    assert 'modelyard_rollout_events_total{reason="CanaryPromoted"}' in metrics, metrics[-2000:]


def rolled_back(cluster: LocalCluster, admin: Kube, namespace: str, op: OperatorProcess) -> dict[str, Any]:
    try:
        return wait_for("the canary to be rolled back", rollout_phase(admin, namespace, "RolledBack"), timeout=180,
                        interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, op)}") from None


def assert_rolled_back_cleanly(cluster: LocalCluster, admin: Kube, namespace: str, stable: str, canary_id: str,
                               answers: list[Answer], check: str, gateway_errors: bool = False) -> dict[str, Any]:
    b = body(admin, namespace)
    r = b["status"]["rollout"]
    assert r["weight"] == 0 and r["stable"] == stable, r
    assert condition(b, "Ready")["status"] == "True", condition(b, "Ready")  # the stable revision serves
    progressing = condition(b, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "CanaryRolledBack"), progressing
    assert check in progressing["message"], progressing
    assert b["status"]["revisions"]["stable"]["name"] == stable
    # Scaled down once it has drained (5 s here): requests the gateway had sent it finish.
    wait_for("the rolled-back canary to be scaled down after its drain", lambda: (admin.get(
        DEPLOYMENTS, namespace, f"{NAME}-{r['canary']}") or {}).get("spec", {}).get("replicas") == 0, timeout=30)
    # The weight never went past the step it failed at (the first), by the canary's own record and the client's.
    served = [a for a in answers if a.who == canary_id]
    assert served, "the canary never got a request"
    # Every failure the client saw came from the canary (a crashed server's requests end at the gateway, which
    # cannot name the revision); the gateway counted no 5xx for the stable revision.
    blamed = Counter(a.who for a in answers if a.status != 200)
    assert set(blamed) <= ({canary_id, ""} if gateway_errors else {canary_id}), (blamed, [
        a for a in answers if a.status != 200 and a.who != canary_id][:5])
    assert stable_5xx(cluster, namespace, stable) == 0
    notes = [(e["reason"], e.get("note") or e.get("message") or "") for e in events(cluster, namespace)]
    assert any(r_ == "CanaryRolledBack" and check in n for r_, n in notes), notes
    return r


def test_failing_slow_and_crashing_canaries_are_rolled_back_and_too_little_traffic_waits(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, models: Path, load: Load,
) -> None:
    op = operator_process
    stable = serving_stable(cluster, admin, namespace, op, "v1", load)

    # No load: the canary gets its weight but no analysis can judge it. It waits and says so; it is not promoted.
    roll_to(cluster, namespace, "failing")
    try:
        waiting = wait_for("the idle canary to wait on too little traffic", lambda: (c := condition(
            body(admin, namespace), "Progressing")).get("reason") == "CanaryWaiting" and "inconclusive" in c.get(
            "message", "") and c, timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, op)}") from None
    assert "needed to judge" in waiting["message"], waiting
    r = body(admin, namespace)["status"]["rollout"]
    assert (r["step"], r["weight"], r["phase"]) == (0, 20, "Progressing"), r

    # Load: the failing canary (40% errors) is rolled back at its first analysis, at the step it was on.
    load.start()
    started = time.time()
    rolled_back(cluster, admin, namespace, op)
    failing = assert_rolled_back_cleanly(cluster, admin, namespace, stable, "failing", load.since(started),
                                         "success-rate")
    assert "weight 20%" in failing["message"] and "failureLimit 1" in failing["message"], failing
    # Flux and Argo CD see the spec as written not served, and no retry serving it: Failed and Degraded, with why.
    (k, k_msg), (argo, argo_msg) = gitops_verdicts(find_gitops_check(), body(admin, namespace))
    assert (k, argo) == ("Failed", "Degraded"), (k_msg, argo_msg)
    assert argo_msg.startswith("CanaryRolledBack: ") and "success-rate" in argo_msg and "success-rate" in k_msg
    assert body(admin, namespace)["status"]["rollout"]["canary"] == failing["canary"]
    time.sleep(INTERVAL)  # remembered: not retried while the spec stays
    assert body(admin, namespace)["status"]["rollout"]["phase"] == "RolledBack"
    assert all(a.who == "v1" for a in load.since(time.time() - INTERVAL / 2)), "traffic went back to the stable"

    # The slow canary fails the latency check.
    started = time.time()
    roll_to(cluster, namespace, "slow")
    wait_for("the slow canary to start", lambda: body(admin, namespace)["status"]["rollout"]["canary"] !=
             failing["canary"], timeout=60)
    slow = rolled_back(cluster, admin, namespace, op)
    assert_rolled_back_cleanly(cluster, admin, namespace, stable, "slow", load.since(started), "latency-p99")
    assert "latency-p99" in slow["message"] and "not <= 500 ms" in slow["message"], slow

    # The crashing canary takes its server down on its third request: its pods failed, it is rolled back.
    started = time.time()
    roll_to(cluster, namespace, "crashing")
    wait_for("the crashing canary to start", lambda: body(admin, namespace)["status"]["rollout"]["canary"] !=
             slow["canary"], timeout=60)
    crashed = rolled_back(cluster, admin, namespace, op)
    assert_rolled_back_cleanly(cluster, admin, namespace, stable, "crashing", load.since(started),
                               "the canary's pods failed", gateway_errors=True)
    assert "exited with code 137" in crashed["message"], crashed
    load.stop()


def route_weights(admin: Kube, namespace: str) -> dict[str, int]:
    route = admin.get(HTTP_ROUTES, namespace, NAME) or {}
    return {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}


def test_an_operator_killed_mid_rollout_resumes_at_the_same_step_and_weight_and_a_person_resumes_the_pause(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, models: Path, load: Load,
) -> None:
    op = operator_process
    stable = serving_stable(cluster, admin, namespace, op, "v1", load)
    load.start()
    steps = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, "v2", steps=steps)))
    try:
        paused = wait_for("the canary to pause at 20% until a person resumes", rollout_phase(
            admin, namespace, "Paused"), timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, op)}") from None
    canary = paused["canary"]
    assert (paused["step"], paused["weight"]) == (1, 20), paused
    assert condition(body(admin, namespace), "Progressing")["reason"] == "CanaryPaused"
    weights = {f"{NAME}-{stable}": 80, f"{NAME}-{canary}": 20}
    assert route_weights(admin, namespace) == weights

    op.kill()
    time.sleep(5)  # the gateway keeps the weights the operator set; nothing else moves them
    assert route_weights(admin, namespace) == weights
    logged = op.log.stat().st_size
    op.start()
    killed_at = time.time()
    # Several resyncs later: the same step, the same weight, no traffic jump.
    reconciled = f"reconciled {namespace}/{NAME}".encode()
    wait_for("the restarted operator to reconcile the model", lambda: reconciled in op.log.read_bytes()[logged:]
             and time.time() > killed_at + 3 * op.resync_seconds, timeout=60, interval=1)
    after = body(admin, namespace)["status"]["rollout"]
    assert (after["canary"], after["step"], after["weight"], after["phase"], after["stepStartedAt"]) == (
        canary, 1, 20, "Paused", paused["stepStartedAt"]), after
    assert route_weights(admin, namespace) == weights
    op.assert_running()

    # A stale resume (another step) does nothing; the right one releases the pause and the rollout goes on.
    annotate = ("annotate", "--overwrite", "-n", namespace, f"mdep/{NAME}")
    cluster.kubectl(*annotate, f"rollout.modelyard.dev/resume={canary}/3")
    time.sleep(3 * op.resync_seconds)
    assert body(admin, namespace)["status"]["rollout"]["phase"] == "Paused"
    cluster.kubectl(*annotate, f"rollout.modelyard.dev/resume={canary}/2")
    wait_for("the resumed canary to reach 50%", lambda: body(admin, namespace)["status"]["rollout"]["weight"] == 50,
             timeout=60, interval=0.5)
    # Promote now, without waiting for the analysis at 50%.
    cluster.kubectl(*annotate, f"rollout.modelyard.dev/promote={canary}")
    try:
        promoted = wait_for("the canary to be promoted by the annotation", rollout_phase(admin, namespace, "Promoted"),
                            timeout=60, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, op)}") from None
    assert "promoted by a person" in promoted["message"], promoted
    wait_for("the promoted revision to serve alone", lambda: "rollout" not in body(admin, namespace)["status"],
             timeout=60, interval=1)
    answers = load.stop()
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    # Nothing ever routed more than the step's share to the canary before the person resumed: the first v2
    # answers after the restart keep to about a fifth.
    window = [a for a in answers if killed_at <= a.at <= killed_at + 3 * op.resync_seconds]
    assert window and 0 < Counter(a.who for a in window)["v2"] < len(window) / 2, Counter(a.who for a in window)

    # Abort: the next canary is rolled back by a person. The promote annotation left behind names the revision
    # before it, so it does nothing to this one.
    roll_to(cluster, namespace, "v1")
    nxt = wait_for("the next canary to start", lambda: (r := body(admin, namespace)["status"].get("rollout")) and
                   r["canary"] != canary and r, timeout=60, interval=0.5)
    time.sleep(2 * op.resync_seconds)
    assert body(admin, namespace)["status"]["rollout"]["phase"] != "Promoted"
    cluster.kubectl(*annotate, f"rollout.modelyard.dev/abort={nxt['canary']}")
    aborted = wait_for("the aborted canary to be rolled back", rollout_phase(admin, namespace, "RolledBack"),
                       timeout=60, interval=0.5)
    assert "aborted by a person" in aborted["message"], aborted
    b = body(admin, namespace)
    assert b["status"]["revisions"]["stable"]["name"] == canary and condition(b, "Ready")["status"] == "True"
