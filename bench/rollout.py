"""Benchmark of canary rollback on live traffic, measured in one run on the local cluster (ratios, not times).

A stable revision serves the echo model through the local Gateway (Traefik) under a bounded load; a canary that
fails 40% of its requests is rolled out at 20%, and the operator (analysis every 10 s, failureLimit 1) rolls it
back. Prints, from that one run:
- time from the failure's start (the first failed request a client saw) to weight 0 (status.rollout.finishedAt),
  in analysis intervals;
- the share of all requests that failed, against the canary's weight and against weight x the canary's own
  failure rate (what a rollout that never reacted would cost per interval).

Needs root, the local cluster's builds (make control-plane prometheus gateway) and the venv.
Usage: .venv/bin/python bench/rollout.py [--rate 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "tests")]  # as pytest orders them (pyproject.toml)


def main() -> int:
    from benchcluster import local_operator

    from canary.load import Load
    from canary.scenario import INTERVAL, NAME, manifest, provision_models
    from helpers import wait_for
    from modelyard.kube.client import MODEL_DEPLOYMENTS

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second through the gateway")
    args = parser.parse_args()
    weight, fail_percent = 20, 40

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp, local_operator(Path(tmp)) as bench:
        cluster, admin, namespace = bench.cluster, bench.admin, bench.namespace
        provision_models(cluster, namespace, bench.work / "models")

        def rollout() -> dict[str, object]:
            body = admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {}
            return dict(body.get("status", {}).get("rollout") or {})

        load = Load(cluster.gateway_url, f"{NAME}.{namespace}.local", rate=args.rate, workers=32)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, "v1")))
        wait_for("the stable revision to answer", lambda: load.ask().who == "v1", timeout=300, interval=1)
        load.start()
        time.sleep(5)
        began = time.time()
        canary = manifest(namespace, "failing", steps=[{"setWeight": weight}, {"setWeight": 50}])
        cluster.kubectl("apply", "-f", "-", input=json.dumps(canary))
        ended = wait_for("the canary to be rolled back", lambda: (r := rollout()).get("phase") == "RolledBack"
                         and r, timeout=300, interval=0.5)
        time.sleep(5)
        answers = [a for a in load.stop() if a.at >= began]

    failed = [a for a in answers if a.status != 200]
    if not failed:
        print("no request failed: the canary never got traffic?", file=sys.stderr)
        return 1
    first_failure = min(a.at for a in failed)
    to_zero = float(str(ended["finishedAt"])) - first_failure
    canary_share = sum(1 for a in answers if a.who == "failing" or a.status != 200) / len(answers)
    failed_share = len(failed) / len(answers)
    print(f"canary at {weight}%, failing {fail_percent}% of its requests; analysis interval {INTERVAL} s, "
          f"failureLimit 1; {len(answers)} requests at {args.rate:g}/s from the canary's start to 5 s after weight 0")
    print(f"failure start -> weight 0: {to_zero / INTERVAL:.2f} analysis intervals")
    print(f"requests the canary served: {100 * canary_share:.2f}% of all (its weight while it had one: {weight}%)")
    print(f"failed requests: {100 * failed_share:.2f}% of all = {failed_share / (weight / 100):.3f} x the canary "
          f"weight = {failed_share / (weight * fail_percent / 10000):.3f} x (weight x its failure rate)")
    print(f"every failed request from the canary: {all(a.who == 'failing' for a in failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
