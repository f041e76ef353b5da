"""`python -m processkubelet`: run one process node until SIGTERM (then its pods' processes are stopped)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from kubernetes import client, config

from processkubelet.images import ROOT, table
from processkubelet.kubelet import Api, Kubelet, Node
from processkubelet.network import claim_index
from processkubelet.plan import LocalRuntime
from processkubelet.supervisor import Backoff


def local_runtime(state: Path) -> LocalRuntime:
    from tritonlocal import TritonMissing, VllmMissing, prepare_backends, vllm_env, vllm_venv

    base_path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    image = tuple(sorted({str(ROOT), sys.prefix, sys.base_prefix}))
    try:
        backends, env = prepare_backends(state / "triton-backends")
    except TritonMissing as exc:  # Triton pods will fail to start and say so; other pods still run
        logging.getLogger("processkubelet").error("%s", exc)
        return LocalRuntime(base_path=base_path, image_paths=image)
    try:
        engine = vllm_env(env, state)
        engine_paths: tuple[str, ...] = (str(vllm_venv()), str(state / "vllm-stub-env"))
        missing = ""
    except VllmMissing as exc:  # vLLM pods will fail to start and say so; other pods still run
        engine, engine_paths, missing = None, (), str(exc)
    return LocalRuntime(base_path=base_path, image_paths=(*image, str(backends), *engine_paths),
                        triton_backends=str(backends), triton_env=env, vllm_env=engine, vllm_missing=missing)


def main() -> int:
    parser = argparse.ArgumentParser(prog="processkubelet")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state", required=True, type=Path, help="pod directories, logs and plans")
    parser.add_argument("--node", default="proc-node-0")
    parser.add_argument("--index", type=int, default=None,
                        help="pod IPs are 198.18.<index>.2-254 (default: the first index no kubelet here holds)")
    parser.add_argument("--gpus", type=int, default=2, help="simulated nvidia.com/gpu capacity")
    parser.add_argument("--backoff-base", type=float, default=10.0, help="CrashLoopBackOff base delay (seconds)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    cfg = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    args.state.mkdir(parents=True, exist_ok=True)
    index, _lock = claim_index() if args.index is None else (args.index, -1)
    kubelet = Kubelet(Api(client.ApiClient(cfg)), Node(args.node, index, args.gpus), args.state, table(),
                      local_runtime(args.state), Backoff(base=args.backoff_base))
    signal.signal(signal.SIGTERM, lambda *_: kubelet.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: kubelet.stopping.set())
    runner = threading.Thread(target=kubelet.run, name="watch", daemon=True)
    runner.start()
    kubelet.stopping.wait()
    kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
