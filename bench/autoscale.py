"""Benchmark of autoscaling on Triton's queue time with real load, measured in one run on the local cluster.

The echo model takes 100 ms a request with one instance, so a replica serves 10 requests/s; KEDA scales it on
Triton's queue time (target 50 ms) between 0 and 3 replicas through the real HPA controller. One run:
idle at 1 replica -> a load step to 25 requests/s for 60 s -> no load (scale in) -> minReplicas 0, idle (to zero)
-> one client retrying a request until it succeeds (cold start). Prints, from that run:
- the reaction to the load step: from the step to the first scale-out and to all replicas ready, in HPA sync periods;
- over- and under-provisioned replica-seconds against an oracle that knows the load (ready replicas against
  ceil(rate / 10) within [min, max]), as fractions of the oracle's replica-seconds, over the load step and after it;
- the cold start from zero: the client's first request to its first success, against a scale-out pod's own start
  (ordered to ready) in the same run; and the operator's own figure (status.scaling.lastColdStartSeconds).

Needs root, the local cluster's builds (make control-plane prometheus gateway keda) and the venv.
Usage: .venv/bin/python bench/autoscale.py [--rate 25] [--seconds 60]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "tests")]  # as pytest orders them (pyproject.toml)


def replica_seconds(samples: list[tuple[float, int]], oracle: list[tuple[float, float, int]]) -> tuple[float, float,
                                                                                                       float]:
    """(over, under, oracle total) replica-seconds: `samples` (time, ready replicas) against `oracle` pieces
    (start, end, replicas), each sample held until the next."""
    over = under = total = 0.0
    for (t, ready), (t_next, _) in itertools.pairwise(samples):
        want = next((n for a, b, n in oracle if a <= t < b), None)
        if want is None:
            continue
        dt = t_next - t
        over += max(0, ready - want) * dt
        under += max(0, want - ready) * dt
        total += want * dt
    return over, under, total


def main() -> int:
    from benchcluster import local_operator

    from autoscale.scenario import NAME, SERVICE_MS, Recorder, manifest, provision_models, status
    from canary.load import Load
    from helpers import wait_for

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second of the load step")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load step lasts")
    args = parser.parse_args()
    per_replica = 1000 / SERVICE_MS
    lo, hi = 1, 3

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp, local_operator(Path(tmp)) as bench:
        cluster, admin, namespace = bench.cluster, bench.admin, bench.namespace
        sync = float(cluster.hpa_sync_period.rstrip("s"))
        provision_models(cluster, namespace, bench.work / "models")
        rec = Recorder(admin, namespace).start()
        load = Load(cluster.gateway_url, f"{NAME}.{namespace}.local", rate=args.rate, workers=32)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, "v1", lo, hi)))
        wait_for("the model to answer", lambda: load.ask().status == 200 or None, timeout=300, interval=1)
        time.sleep(10)
        step = time.time()
        load.start()
        scaled = rec.first("a scale-out", step, lambda s: s.replicas > 1)
        top = rec.first("every replica the load needs to be ready", step,
                        lambda s: s.ready >= min(hi, math.ceil(args.rate / per_replica)))
        # The scale-out pods, while they exist: how long one takes from creation to ready is the baseline.
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        time.sleep(max(0.0, step + args.seconds - time.time()))
        answers = load.stop()
        stop = time.time()
        rec.first("scale-in", stop, lambda s: s.replicas == lo)
        time.sleep(10)
        settled = time.time()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, "v1", 0, hi)))
        rec.first("zero", settled, lambda s: s.replicas == 0)
        time.sleep(3)
        asked = time.time()
        tries = 1
        while load.ask().status != 200:
            tries += 1
            time.sleep(0.25)
        answered = time.time()
        cold = wait_for("the operator's cold start", lambda: status(admin, namespace).get("scaling", {}).get(
            "lastColdStartSeconds"), timeout=60)
        rec.stop()

    samples = [(s.at, s.ready) for s in rec.samples]
    needed = min(hi, max(lo, math.ceil(args.rate / per_replica)))
    over_step, under_step, total_step = replica_seconds(samples, [(step, stop, needed)])
    over_after, under_after, total_after = replica_seconds(samples, [(stop, settled, lo)])
    starts = []
    for pod in pods:  # a scale-out pod: created after the step
        created = datetime.fromisoformat(pod["metadata"]["creationTimestamp"]).timestamp()
        ready = next((c["lastTransitionTime"] for c in pod["status"].get("conditions", []) if c["type"] == "Ready"
                      and c["status"] == "True"), None)
        if ready and created >= step - 1:
            starts.append(datetime.fromisoformat(ready).timestamp() - created)
    pod_start = sorted(starts)[len(starts) // 2] if starts else float("nan")
    ok = sum(1 for a in answers if a.status == 200)
    print(f"load step 0 -> {args.rate:g} req/s for {args.seconds:g} s; a replica serves {per_replica:g} req/s; "
          f"queue-time target 50 ms; range {lo}-{hi}; HPA sync period {sync:g} s; {ok}/{len(answers)} answered 200")
    print(f"reaction: first scale-out {(scaled - step) / sync:.2f} sync periods after the step; "
          f"{needed} replicas ready after {(top - step) / sync:.2f} sync periods")
    print(f"during the step (oracle {needed} replicas): over-provisioned {over_step / total_step:.3f}, "
          f"under-provisioned {under_step / total_step:.3f} of the oracle's {total_step:.0f} replica-seconds")
    print(f"after the step (oracle {lo}): over-provisioned {over_after / total_after:.3f}, "
          f"under-provisioned {under_after / total_after:.3f} of {total_after:.0f} replica-seconds")
    print(f"cold start from zero: first request -> first success {answered - asked:.1f} s ({tries} tries) = "
          f"{(answered - asked) / pod_start:.2f} x a scale-out pod's own start ({pod_start:.0f} s, median of "
          f"{len(starts)}; second resolution); the operator's figure (left zero -> first pod ready): {cold} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
