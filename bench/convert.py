"""Benchmark of the converter on the reference CNN, measured in one run on this machine (ratios, not times).

Prints: ONNX Runtime fp32 vs torch eager throughput, int8 vs fp32 artifact size, and INT8 that keeps accuracy on
trained models (the reference CNN, torchvision's ResNet-18) with the task's samples as the user's data: top-1
agreement of plain int8 and after the accuracy-aware fallback, and the size it costs.
And the accuracy-aware fallback's cost on DenseNet-121 against a plain int8 conversion, with calibration computed
once and, as before, for every probe.
Usage: .venv/bin/python bench/convert.py [--batch 8] [--seconds 3] [--skip-resnet] [--skip-densenet]
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
    parser.add_argument("--skip-resnet", action="store_true", help="only the reference CNN in the int8 table")
    parser.add_argument("--skip-densenet", action="store_true", help="without the fallback's cost on DenseNet-121")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model = save_torchscript(ReferenceCNN, d / "cnn.pt")
        src = ModelSource.model_validate(source(str(d / "cnn.pt"), "torchscript", CNN_SIGNATURE))
        serving = Serving.model_validate({"gpus": 0, "maxBatchSize": 32})
        fp32 = convert(Request("cnn", src, Conversion(), serving), d / "store")
        int8 = convert(Request("cnn", src, Conversion.model_validate(
            {"precision": "int8", "tolerance": {"atol": 0.25, "rtol": 0.25}}), serving), d / "store")

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
    print("\nINT8 on trained models (task samples as the user's data: 256 validate, 64 calibrate; classifier "
          "output declared; gate: top-1 >= 0.99)")
    print(f"{'model':34} {'accuracy':>8} {'plain int8':>10} {'fallback':>9} {'kept fp32':>9} {'size/fp32':>9}  verdict")
    cases = [("reference CNN, noise 6", ReferenceCNN, 6.0, 100)]
    if not args.skip_resnet:
        import torchvision

        cases += [("ResNet-18, noise 6", lambda: torchvision.models.resnet18(num_classes=10), 6.0, 60),
                  ("ResNet-18, noise 8 (harder)", lambda: torchvision.models.resnet18(num_classes=10), 8.0, 40)]
    for name, make, noise, steps in cases:
        print(int8_row(name, make, noise, steps, serving))
    if not args.skip_densenet:
        print(fallback_cost(serving))
    return 0


def fallback_cost(serving: object) -> str:
    """The accuracy-aware fallback's cost on a deep model (DenseNet-121: 120 convolutions). Its worst case, every
    attempt failing the gate (a gate that always says no, so that every attempt runs), against one plain int8
    quantization of the same model in the same run; and the same worst case as it was (48 nodes measured, each
    probe calibrating again)."""
    import shutil

    import torch
    import torchvision

    import modelyard.convert.quantize as q
    from convert_models import CNN_SIGNATURE, TemplateTask, save_traced, source
    from modelyard.api.v1alpha1 import ModelSource
    from modelyard.api.v1alpha1.conversion import Conversion
    from modelyard.convert.pipeline import Request, convert

    task = TemplateTask(noise=6.0)
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=10).eval()
    calibration = [{"image": task.sample(8, 12 + i)[0].numpy()} for i in range(8)]  # 64 samples
    attempts = Conversion().int8_fallback_attempts  # the default

    def never(_: Path) -> tuple[bool, str, float | None]:
        return False, "the bench's gate says no", None

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        save_traced(model, d / "m.pt", torch.from_numpy(calibration[0]["image"][:2]))
        src = ModelSource.model_validate(source(str(d / "m.pt"), "torchscript", CNN_SIGNATURE))
        fp32 = convert(Request("m", src, Conversion(), serving), d / "store")  # type: ignore[arg-type]
        artifact = Path(fp32["repository"]) / fp32["artifact"]["path"]

        def run(fallback: int) -> tuple[float, q.Int8Result]:
            work = d / "scratch" / "repository" / "m" / "1"
            work.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact, work / "model.onnx")
            conversion = Conversion.model_validate({"precision": "int8", "int8Mode": "static",
                                                    "int8FallbackAttempts": fallback})
            start = time.perf_counter()
            result = q.to_int8(work / "model.onnx", conversion, calibration, never)
            return time.perf_counter() - start, result

        plain, _ = run(0)
        fallback, result = run(attempts)
        original = q.quantize

        def per_probe(*a: object, **kw: object) -> None:  # as it was: every probe and attempt calibrates again
            kw.pop("ranges", None)
            original(*a, **kw)  # type: ignore[arg-type]

        q.quantize, q.MAX_MEASURED, bound = per_probe, 48, q.MAX_MEASURED  # and 48 nodes measured
        try:
            before, _ = run(attempts)
        finally:
            q.quantize, q.MAX_MEASURED = original, bound
    probes = sum(1 for _, e in result.sensitivity if e is not None)
    return (f"\nThe int8 fallback's worst case on DenseNet-121 (static, 64 calibration samples, {attempts} attempts "
            f"all failing, {probes} of {len(result.sensitivity)} weighted nodes measured one by one), against one "
            f"plain int8 quantization ({plain:.0f} s here):\n  fallback {fallback / plain:.1f}x   as it was (48 nodes "
            f"measured, calibrating for every probe) {before / plain:.1f}x   ({before / fallback:.1f}x faster now)")


def int8_row(name: str, make: Callable[[], object], noise: float, steps: int, serving: object) -> str:
    import torch

    from convert_models import CNN_SIGNATURE, TemplateTask, save_traced, source, trained
    from modelyard.api.v1alpha1 import ModelSource
    from modelyard.api.v1alpha1.conversion import Conversion
    from modelyard.convert.errors import ValidationFailed
    from modelyard.convert.pipeline import Request, convert

    task = TemplateTask(noise=noise)
    torch.manual_seed(0)
    model = trained(make(), task, steps=steps)  # type: ignore[arg-type]
    x, y = task.sample(512, 7)
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        save_traced(model, d / "m.pt", x[:2])
        conv = {"precision": "int8", "tolerance": {"classifierOutputs": ["logits"]},
                "samples": {"uri": str(task.save(d / "v.npz", 256, 11)),
                            "calibrationUri": str(task.save(d / "c.npz", 64, 12))}}
        src = ModelSource.model_validate(source(str(d / "m.pt"), "torchscript", CNN_SIGNATURE))
        try:
            manifest = convert(Request("m", src, Conversion.model_validate(conv), serving), d / "store")  # type: ignore[arg-type]
        except ValidationFailed as exc:
            return f"{name:34} {accuracy:8.2f} {'':>10} {'':>9} {'':>9} {'':>9}  NOT REACHED: {exc.message[:400]}"
    i8 = manifest["int8"]
    plain, last = i8["attempts"][0], i8["attempts"][-1]
    verdict = "MET" if last["top1"] >= 0.99 and i8["sizeRatio"] <= 0.35 else "NOT MET (size)"
    return (f"{name:34} {accuracy:8.2f} {plain['top1']:10.4f} {last['top1']:9.4f} {len(i8['keptFloat']):9d} "
            f"{i8['sizeRatio']:9.3f}  {verdict}" + (f" kept: {', '.join(i8['keptFloat'])}" if i8["keptFloat"] else ""))


if __name__ == "__main__":
    sys.exit(main())
