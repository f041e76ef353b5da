"""Benchmark of the converter on the reference CNN, measured in one run on this machine (ratios, not times).

Prints: ONNX Runtime fp32 vs torch eager throughput, int8 vs fp32 artifact size, int8 top-1 agreement with the
source. Usage: .venv/bin/python bench/convert.py [--batch 8] [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "hack")]
warnings.filterwarnings("ignore")


def throughput(fn: Callable[[], object], batch: int, seconds: float) -> float:
    """Samples per second over `seconds` of repeated calls, after a warm-up."""
    for _ in range(3):
        fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return calls * batch / elapsed


def main() -> int:
    import onnxruntime as ort
    import torch

    from convert_models import CNN_SIGNATURE, ReferenceCNN, save_torchscript, source
    from modelyard.api.v1alpha1 import ModelSource, Serving
    from modelyard.api.v1alpha1.conversion import Conversion
    from modelyard.convert.pipeline import Request, convert

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model = save_torchscript(ReferenceCNN, d / "cnn.pt")
        src = ModelSource.model_validate(source(str(d / "cnn.pt"), "torchscript", CNN_SIGNATURE))
        serving = Serving.model_validate({"gpus": 0, "maxBatchSize": 32})
        fp32 = convert(Request("cnn", src, Conversion(), serving), d / "store")
        int8 = convert(Request("cnn", src, Conversion.model_validate({"precision": "int8"}), serving), d / "store")

        x = np.random.default_rng(0).standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
        xt = torch.from_numpy(x)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(Path(fp32["repository"]) / fp32["artifact"]["path"]), opts,
                                       providers=["CPUExecutionProvider"])

        def eager() -> object:
            with torch.inference_mode():
                return model(xt)

        def onnx() -> object:
            return session.run(None, {"image": x})

        t_eager = throughput(eager, args.batch, args.seconds)
        t_onnx = throughput(onnx, args.batch, args.seconds)

    params = sum(p.numel() for p in model.parameters())
    print(f"reference CNN ({params} parameters), batch {args.batch}, {args.seconds:g}s per measurement, "
          f"torch threads {torch.get_num_threads()}")
    print(f"throughput  torch eager {t_eager:10.1f}/s   onnxruntime fp32 {t_onnx:10.1f}/s   "
          f"ratio onnx/eager {t_onnx / t_eager:.2f}")
    print(f"size        fp32 {fp32['artifact']['bytes']} B   int8 {int8['artifact']['bytes']} B   "
          f"ratio int8/fp32 {int8['artifact']['bytes'] / fp32['artifact']['bytes']:.2f}")
    v = int8["validation"]
    print(f"int8        top-1 agreement {v['top1_agreement']:.4f} on {v['samples']} samples, "
          f"max abs error {v['max_abs_error']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
