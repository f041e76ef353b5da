"""Export to the target format, prune, and compress (fp16, int8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.api.v1alpha1.conversion import Conversion, Precision, Target
from modelyard.convert.errors import ConversionFailed, ConversionUnsupported
from modelyard.convert.models import Runnable, Tensor, tf_environment


def prune(runnable: Runnable, sparsity: float) -> float:
    """Zero the smallest-magnitude weights, globally over every weight matrix and kernel; return the sparsity."""
    import torch

    module = runnable.torch_module
    if module is None:
        raise ConversionUnsupported("pruning works on torch sources; this source is ONNX")
    weights = [p for _, p in module.named_parameters() if p.dim() >= 2]
    if not weights:
        return 0.0
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    k = max(1, int(sparsity * flat.numel()))
    threshold = flat.kthvalue(k).values
    zeros = 0
    with torch.no_grad():
        for w in weights:
            mask = w.abs() > threshold
            w.mul_(mask)
            zeros += int((~mask).sum())
    return zeros / flat.numel()


def _example_args(inputs: list[Tensor], feed: dict[str, NDArray[Any]]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feed[t.name])) for t in inputs)


def export_onnx(
    runnable: Runnable, feed: dict[str, NDArray[Any]], out: Path, opset: int, batched: bool, pruned: bool = False
) -> None:
    """torch -> ONNX. A torch.export program goes through the dynamo exporter with the dynamic shapes it was
    exported with; other modules (TorchScript among them) through the TorchScript-based exporter, batch axis and
    -1 dimensions dynamic."""
    import torch

    if runnable.saved_model is not None:
        export_saved_model(runnable.saved_model, out, opset)
        return
    if runnable.keras_model is not None:
        runnable.run(feed)  # Keras exports a model that has been called (built on real shapes)
        export_keras(runnable, out, opset)
        return
    if runnable.exported_program is not None and not pruned:
        try:
            torch.onnx.export(
                runnable.exported_program, _example_args(runnable.inputs, feed), str(out), dynamo=True,
                input_names=[t.name for t in runnable.inputs], output_names=[t.name for t in runnable.outputs],
                opset_version=max(opset, 18), verbose=False,
            )
        except torch.onnx.errors.OnnxExporterError as exc:  # torch.onnx._internal.exporter's ConversionError too
            raise ConversionFailed(exporter_failure(str(exc))) from exc
        _inline_external_data(out)
        return
    names_in = [t.name for t in runnable.inputs]
    names_out = [t.name for t in runnable.outputs]
    axes: dict[str, dict[int, str]] = {}
    for t in [*runnable.inputs, *runnable.outputs]:
        offset = 1 if batched else 0
        dyn = {i + offset: f"{t.name}_d{i}" for i, d in enumerate(t.dims) if d == -1}
        if batched:
            dyn[0] = "batch"
        if dyn:
            axes[t.name] = dyn
    try:
        torch.onnx.export(
            runnable.torch_module, _example_args(runnable.inputs, feed), str(out), dynamo=False,
            input_names=names_in, output_names=names_out, dynamic_axes=axes, opset_version=opset,
        )
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        raise ConversionFailed(
            f"{str(exc).splitlines()[0][:300]}: the TorchScript-based ONNX exporter has no translation for it. "
            "Export the model with torch.export instead (torch.export.export, then torch.export.save to a .pt2, "
            "format pytorch): the dynamo exporter translates far more operators; or raise conversion.opset if a "
            "later opset has it") from exc
    except torch.onnx.errors.OnnxExporterError as exc:
        raise ConversionFailed(
            f"the TorchScript-based ONNX exporter failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}. "
            "Export the model with torch.export (a .pt2, format pytorch) for the dynamo exporter") from exc


def exporter_failure(text: str) -> str:
    """What the dynamo exporter's failure says, for the user: the step it failed at, the exception, the line of
    the model's code; not its instructions to file bugs against torch (nor its terminal colours)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    step = re.search(r"^(.*?)\. This is step (\d)/3", text, re.M)
    summary = re.search(r"## Exception summary\s+(.+?)(?:\n\n|$)", text, re.S)
    cause = (summary.group(1) if summary else text.splitlines()[0] if text else "").strip().replace("\n", " ")
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s+(.+)', text)
    where = f" at {frames[-1][0].rsplit('/', 1)[-1]}:{frames[-1][1]} ({frames[-1][3].strip()[:120]})" if frames else ""
    what = f"{step.group(1)} (step {step.group(2)} of 3)" if step else "torch's ONNX exporter failed"
    return (f"{what}: {cause[:500]}{where}. The torch.export program is valid; torch's ONNX exporter cannot "
            "translate it with these dynamic shapes. Export it with fewer dynamic dimensions (the batch only), or "
            "save it traced (torch.jit.trace, format torchscript) for the TorchScript-based exporter")


def export_saved_model(saved_model: Path, out: Path, opset: int) -> None:
    """tf2onnx, in a process of its own (TensorFlow's graph rewriting and logging stay out of the converter's)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model), "--output", str(out),
           "--opset", str(opset)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=tf_environment(), check=False, timeout=3600)
    if done.returncode != 0 or not out.is_file():
        errors = [line for line in done.stderr.splitlines() if "Error" in line or "error" in line]
        raise ConversionFailed(f"tf2onnx could not convert the SavedModel (exit {done.returncode}): "
                               + (" | ".join(errors[-3:]) or done.stderr[-600:])[:1200])


def export_keras(runnable: Runnable, out: Path, opset: int) -> None:
    """Keras's own ONNX export (on the torch backend it drives torch's exporter), then the graph's inputs and
    outputs renamed to the source's names: Keras numbers them."""
    import onnx

    try:
        runnable.keras_model.export(str(out), format="onnx", opset_version=max(opset, 18), verbose=False)
    except Exception as exc:
        raise ConversionFailed(f"Keras's ONNX export failed: {type(exc).__name__}: {exc}"[:1000]) from exc
    _inline_external_data(out)
    model = onnx.load(str(out))
    renames = {}
    for value, tensor in [*zip(model.graph.input, runnable.inputs, strict=False),
                          *zip(model.graph.output, runnable.outputs, strict=False)]:
        if value.name != tensor.name:
            renames[value.name] = tensor.name
            value.name = tensor.name
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.save(model, str(out))


def _inline_external_data(path: Path) -> None:
    """One self-contained model.onnx: Triton's repository layout and the quantizer both expect that."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    for extra in path.parent.glob(path.name + ".data"):
        extra.unlink()
    onnx.save(model, str(path), save_as_external_data=False)


def export_torchscript(runnable: Runnable, feed: dict[str, NDArray[Any]], out: Path) -> None:
    import torch

    module = runnable.torch_module
    if module is None:
        raise ConversionUnsupported("ONNX sources cannot be converted to TorchScript; use target onnx")
    if not isinstance(module, torch.jit.ScriptModule):
        module = torch.jit.trace(module, _example_args(runnable.inputs, feed))  # type: ignore[no-untyped-call]
    torch.jit.save(module, str(out))


def to_fp16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Inputs and outputs stay FP32: clients need not change, Triton casts at the edges.
    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def check_supported(conversion: Conversion) -> None:
    """Refuse what this machine cannot produce, before any work."""
    if conversion.target == Target.TENSORRT:
        try:
            import tensorrt  # noqa: F401
            import torch

            gpu = torch.cuda.is_available()
        except ImportError:
            gpu = False
        if not gpu:
            raise ConversionUnsupported(
                "target tensorrt needs a GPU and TensorRT in the converter image; this converter has neither. "
                "Use target onnx (Triton's onnxruntime backend can still use TensorRT as an execution provider)"
            )
        raise ConversionUnsupported("target tensorrt is not implemented in this converter version")
    if conversion.target == Target.TORCHSCRIPT and conversion.precision != Precision.FP32:
        raise ConversionUnsupported(
            f"precision {conversion.precision} is produced for target onnx only (TorchScript fp16 needs a GPU and "
            "int8 needs a quantization backend Triton's libtorch backend does not run); use target onnx"
        )


def fp16_emulation(src: Path, dst: Path) -> int:
    """An fp32 graph that computes what the fp16 graph at `src` computes where it serves in fp16: every tensor the
    fp16 graph holds in fp16 (weights, every node's output) is rounded to fp16 (Cast to FLOAT16, then back to FLOAT:
    explicit casts onnxruntime keeps), while each op computes in fp32 inside, as GPU kernels accumulate. A value
    over 65504 becomes inf, a small step on a large value vanishes: what onnxruntime's CPU provider hides when it
    runs an fp16 graph (it computes the ops it has no fp16 kernel for in fp32 and drops the casts between them).
    Written to `dst` (not published); returns how many tensors are rounded. Raises ConversionUnsupported for what
    it cannot rewrite (subgraphs, fp16 in attributes it does not know)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({i.name: i.data_type for i in graph.initializer})
    fp16, fp32 = TensorProto.FLOAT16, TensorProto.FLOAT

    for init in graph.initializer:
        if init.data_type == fp16:  # fp16 values are exact in fp32: the weights as the fp16 graph holds them
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == fp16:
            value.type.tensor_type.elem_type = fp32
    del graph.value_info[:]

    nodes, rounded = [], 0
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise ConversionUnsupported(f"the fp16 graph has a subgraph ({node.op_type} {node.name}): its fp16 "
                                            "arithmetic cannot be emulated on CPU")
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == fp16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == fp16:
                attr.i = fp32
            elif attr.name == "dtype" and attr.i == fp16:
                raise ConversionUnsupported(f"{node.op_type} {node.name} makes fp16 values by its dtype: its fp16 "
                                            "arithmetic cannot be emulated on CPU")
        renamed = []
        for i, out in enumerate(node.output):
            if out and types.get(out) == fp16:
                node.output[i] = f"{out}__fp16emu_raw"
                renamed.append(out)
        nodes.append(node)
        for out in renamed:
            nodes += [helper.make_node("Cast", [f"{out}__fp16emu_raw"], [f"{out}__fp16emu_half"], to=fp16),
                      helper.make_node("Cast", [f"{out}__fp16emu_half"], [out], to=fp32)]
            rounded += 1
    del graph.node[:]
    graph.node.extend(nodes)
    large = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB: the weights beside it, as the exporter does
    onnx.save(model, str(dst), save_as_external_data=large, location=f"{dst.name}.data" if large else None)
    return rounded
