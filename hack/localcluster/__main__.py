"""`python -m localcluster up --dir DIR`: bring the local control plane up and keep it until interrupted."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from localcluster import LocalCluster, find_binaries, operator_rbac


def main() -> int:
    parser = argparse.ArgumentParser(prog="localcluster")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver, controller-manager, scheduler, kwok nodes, a process "
                        "kubelet node and Prometheus")
    up.add_argument("--dir", required=True, type=Path, help="state directory; the kubeconfig is DIR/admin.kubeconfig")
    up.add_argument("--gpu-nodes", type=int, default=2)
    up.add_argument("--cpu-nodes", type=int, default=1)
    sub.add_parser("rbac", help="print the operator's ClusterRole and its binding to user modelyard-operator")
    sub.add_parser("binaries", help="print the directory of the control-plane binaries, building them if needed")
    args = parser.parse_args()
    if args.command == "rbac":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": operator_rbac()}))
        return 0
    if args.command == "binaries":
        print(find_binaries())
        return 0
    cluster = LocalCluster(args.dir, gpu_nodes=args.gpu_nodes, cpu_nodes=args.cpu_nodes).start()
    (args.dir / "prometheus-url").write_text(cluster.prometheus_url)
    (args.dir / "ready").write_text(str(cluster.kubeconfig))
    print(f"local control plane up: export KUBECONFIG={cluster.kubeconfig}; Prometheus at {cluster.prometheus_url}",
          flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop:
        time.sleep(0.5)
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
