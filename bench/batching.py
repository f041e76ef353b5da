"""Dynamic batching on the local Triton's python-backend ONNX model, measured in one run (ratios, not times).

The same converted CNN is served twice by one real tritonserver (the nvidia-pytriton wheel): with dynamic batching
on (max batch 32) and off. Clients send single-image requests at concurrency 1 and 32, alternating between the two
models in short rounds; printed: each model's throughput at concurrency 32 over its throughput at concurrency 1,
and batching on over off at concurrency 32 (the python model runs the batch Triton hands it as one onnxruntime
call; before it did, this ratio was 0.98x: one call a request gains nothing from being batched).

Needs the venv (torch, onnxruntime, nvidia-pytriton). Usage: .venv/bin/python bench/batching.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "tests")]  # as pytest orders them (pyproject.toml)
warnings.filterwarnings("ignore")


def throughput(port: int, model: str, concurrency: int, seconds: float) -> float:
    import tritonclient.http as httpclient

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    stop = time.monotonic() + seconds
    done = [0] * concurrency

    def client(k: int) -> None:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        inp = httpclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        while time.monotonic() < stop:
            c.infer(model, [inp])
            done[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - start)


def main() -> int:
    from convert_models import CNN, CNN_SIGNATURE, save_torchscript, source
    from modelyard.api.v1alpha1 import ModelSource, Serving
    from modelyard.api.v1alpha1.conversion import Conversion
    from modelyard.convert.pipeline import Request, convert
    from tritonlocal import Triton

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one measuring round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-batching-") as tmp:
        d = Path(tmp)
        save_torchscript(CNN, d / "cnn.pt")
        repo = d / "repository"
        repo.mkdir()
        src = ModelSource.model_validate(source(str(d / "cnn.pt"), "torchscript", CNN_SIGNATURE))
        for name, batching in (("batched", {"enabled": True, "maxQueueDelayMicroseconds": 500}),
                               ("unbatched", {"enabled": False})):
            serving = Serving.model_validate({"gpus": 0, "maxBatchSize": 32, "dynamicBatching": batching})
            manifest = convert(Request(name, src, Conversion(), serving, flavour="python"), d / "store")
            (repo / name).symlink_to(Path(manifest["repository"]) / name)
        triton = Triton(repo, d).start()
        try:
            rates: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.rounds):
                for model in ("batched", "unbatched"):
                    for concurrency in (1, 32):
                        rates.setdefault((model, concurrency), []).append(
                            throughput(triton.http_port, model, concurrency, args.seconds))
        finally:
            triton.stop()
    med = {k: float(np.median(v)) for k, v in rates.items()}
    for model in ("batched", "unbatched"):
        print(f"{model:>9}: concurrency 32 / concurrency 1 = {med[(model, 32)] / med[(model, 1)]:.2f}x "
              f"(medians of {args.rounds} rounds of {args.seconds:g}s)")
    print(f"concurrency 32: dynamic batching on / off = {med[('batched', 32)] / med[('unbatched', 32)]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
