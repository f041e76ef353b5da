"""INT8 that keeps accuracy: per-channel weights, calibrated activations, and an accuracy-aware fallback.

The fallback is what the gate asks for when plain int8 fails it: rank the model's nodes by how much quantization
noise each adds (measured on the calibration samples, never the validation ones), then quantize again keeping the
1, 2, 4, 8, ... most sensitive nodes in fp32, until the gate passes or the attempts run out. The result records
which nodes were quantized and which were kept in higher precision, and what that costs in size.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.api.v1alpha1.conversion import Calibration, Conversion, Int8Mode
from modelyard.convert.errors import ConversionUnsupported

Feed = dict[str, NDArray[Any]]

PER_CHANNEL_DYNAMIC = False
MIN_QUANTIZED_SHARE = 0.5
"""Below this share of the weight bytes in int8, the artifact is not called int8 (static QDQ leaves LSTMs, for
one, in float): the request is refused with what would have been quantized, and the fallback stops before it
keeps so many nodes in fp32 that the share falls under it (a model it would have to keep all fp32 is not int8)."""


@dataclass
class Attempt:
    kept_float: list[str]
    passed: bool
    bytes: int
    """The candidate's weight bytes (weight_bytes)."""
    summary: str
    top1: float | None = None
    weight_bits: int = 8
    """8, or 7 for dynamic int8's first fallback: onnxruntime's reduce_range, weights that cannot saturate the
    16-bit sums of x86 CPUs without VNNI."""


@dataclass
class Int8Result:
    mode: str
    calibration: str | None
    quantized: list[str]
    """The weight-bearing nodes whose weights are int8 in the artifact."""
    kept_float: list[str]
    """The weight-bearing nodes left in fp32: by the fallback, or because the quantizer does not handle them."""
    weight_share: float
    """The share of the weight bytes stored as int8."""
    size_ratio: float
    """The artifact's weight bytes over the fp32 model's (weight_bytes: each distinct weight once)."""
    attempts: list[Attempt] = field(default_factory=list)
    stopped: str | None = None
    """Why the fallback stopped before its attempts ran out (the int8 share floor), if it did."""
    sensitivity: list[tuple[str, float | None]] = field(default_factory=list)
    """The fallback's ranking, most sensitive first: each node with the output error (rms over the spread, summed
    over the outputs and calibration feeds) of the model quantized with that node alone kept in fp32; None for the
    nodes past MAX_MEASURED, ranked by their weights alone. Empty when the fallback did not run."""
    weight_bits: int = 8
    """Of the artifact's int8 weights: 7 when the 7-bit attempt passed."""

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "calibration": self.calibration, "quantizedNodes": self.quantized,
                "keptFloat": self.kept_float, "weightShareInt8": round(self.weight_share, 4),
                "sizeRatio": round(self.size_ratio, 4), "weightBits": self.weight_bits,
                "attempts": [{"keptFloat": len(a.kept_float), "passed": a.passed, "bytes": a.bytes,
                              "top1": a.top1, "summary": a.summary, "weightBits": a.weight_bits}
                             for a in self.attempts],
                "sensitivity": [{"node": n, "errorKeptAlone": None if e is None else round(e, 6)}
                                for n, e in self.sensitivity]}


class _Reader:
    """onnxruntime's CalibrationDataReader over the calibration batches."""

    def __init__(self, feeds: list[Feed]) -> None:
        self._it: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def __iter__(self) -> Iterator[Feed]:
        return self._it


def _weights(model: Any) -> dict[str, Any]:
    """Float initializers of two or more dimensions: the model's weights."""
    from onnx import TensorProto

    return {t.name: t for t in model.graph.initializer
            if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE) and len(t.dims) >= 2}


def _nbytes(tensor: Any) -> int:
    from onnx import numpy_helper

    return int(numpy_helper.to_array(tensor).nbytes)


def _all_nodes(graph: Any) -> Iterator[Any]:
    """The graph's nodes and those of its subgraphs (If, Loop, Scan bodies)."""
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def weight_bytes(path: Path) -> int:
    """The bytes of the weights a model holds: the initializers something reads and the Constant nodes' tensors,
    each distinct content once. Not the file's size: an exporter may write a tied weight twice or keep initializers
    nothing reads (the quantizer's preprocessing drops them), which made an int8 artifact look 5x smaller than it
    is; and weights in external data are not in the .onnx file at all."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))  # with its external data
    nodes = list(_all_nodes(model.graph))
    read = {name for node in nodes for name in node.input} | {o.name for o in model.graph.output}
    tensors = [t for t in model.graph.initializer if t.name in read]
    tensors += [a.t for node in nodes if node.op_type == "Constant" for a in node.attribute if a.name == "value"]
    seen: set[tuple[str, tuple[int, ...], bytes]] = set()
    total = 0
    for tensor in tensors:
        array = numpy_helper.to_array(tensor)
        key = (array.dtype.str, tuple(array.shape), hashlib.sha256(array.tobytes()).digest())
        if key not in seen:
            seen.add(key)
            total += int(array.nbytes)
    return total


def weighted_nodes(path: Path) -> dict[str, int]:
    """Nodes that read a float weight directly, with the bytes of those weights."""
    import onnx

    model = onnx.load(str(path))
    weights = _weights(model)
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            continue
        size = sum(_nbytes(weights[i]) for i in node.input if i in weights)
        if size:
            out[node.name] = size
    return out


def quantize(source: Path, out: Path, mode: Int8Mode, method: Calibration, calibration: list[Feed],
             exclude: list[str], reduce_range: bool = False, ranges: Path | None = None) -> None:
    """Quantize `source` with `exclude` kept in float. `ranges` (static): a file of the activations' calibrated
    ranges, written by the first call and read by the next ones. Calibration runs the float model over every
    calibration sample and does not depend on what is excluded: computed once, not once per fallback probe."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == Int8Mode.DYNAMIC:
        # The dynamic quantizer turns a Gemm into <name>_MatMul + <name>_Add before it excludes by name: a Gemm
        # kept in fp32 is named both ways, or it is quantized all the same.
        names = [*exclude, *(f"{n}{GEMM_AS_MATMUL}" for n in exclude)]
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=PER_CHANNEL_DYNAMIC,
                         nodes_to_exclude=names or None, reduce_range=reduce_range)
        return
    methods = {Calibration.MINMAX: CalibrationMethod.MinMax, Calibration.PERCENTILE: CalibrationMethod.Percentile,
               Calibration.ENTROPY: CalibrationMethod.Entropy}
    quantize_static(str(source), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=methods[method], nodes_to_exclude=exclude or None,
                    calibration_cache_path=ranges)


GEMM_AS_MATMUL = "_MatMul"


def _as_before(name: str, before: dict[str, int]) -> str:
    """A node of the quantized model by its name in the float one (the dynamic quantizer renames a Gemm)."""
    base = name.removesuffix(GEMM_AS_MATMUL)
    return base if base != name and base in before else name


MAX_MEASURED = 24
"""At most this many nodes are measured one by one (the rest ranked by their weights' int8 error alone): the
bound on the fallback's work, each probe costing about one int8 quantization (on DenseNet-121, 121 weighted nodes,
the worst case went from 50x one plain int8 quantization, 5 minutes on 2 cores, to 20x: bench/convert.py)."""


def sensitivity(prepared: Path, mode: Int8Mode, method: Calibration, calibration: list[Feed], work: Path,
                ranges: Path | None = None, order: list[str] | None = None) -> list[tuple[str, float | None]]:
    """Weight-bearing nodes ranked by how much better the model does with that node alone kept in fp32: the
    output error against the float model, on the calibration samples (never the validation ones). Measured, not
    estimated: the first convolution that sees the raw input, the classic sensitive layer, ranks by what its
    quantization really costs. Each comes with its measured error (None past MAX_MEASURED). `order`: the
    weighted nodes in graph order (weighted_nodes), whose first and last are always measured."""
    from modelyard.convert.models import onnx_runnable

    feeds = calibration[:4]
    float_model = onnx_runnable(prepared, True)  # one session for every feed
    reference = [float_model.run(f) for f in feeds]
    spreads = [float(np.concatenate([r[i].ravel() for r in reference]).astype(np.float64).std()) or 1.0
               for i in range(len(reference[0]))] if reference else []
    by_weight = weight_sensitivity(prepared)
    # The first weighted node (it sees the raw input) and the last (the head) are measured whatever their weights
    # say: the layers most often sensitive to int8 activations.
    order = list(weighted_nodes(prepared)) if order is None else order
    ends = [n for n in dict.fromkeys(order[:1] + order[-1:]) if n in by_weight]
    ranked = ends + [n for n in by_weight if n not in ends]
    measured, rest = ranked[:MAX_MEASURED], ranked[MAX_MEASURED:]
    probe = work / "probe.onnx"
    scores: list[tuple[float, str]] = []
    for node in measured:
        quantize(prepared, probe, mode, method, calibration, [node], ranges=ranges)
        model = onnx_runnable(probe, True)
        err = 0.0
        for feed, want in zip(feeds, reference, strict=True):
            got = model.run(feed)
            err += sum(float(np.sqrt(((g.astype(np.float64) - w) ** 2).mean())) / s
                       for g, w, s in zip(got, want, spreads, strict=True))
        scores.append((err, node))
    return [(name, err) for err, name in sorted(scores)] + [(name, None) for name in rest]


def weight_sensitivity(float_model: Path) -> list[str]:
    """Weight-bearing nodes ranked by the int8 (per-tensor) error of their weights, largest first."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(float_model))
    weights = _weights(model)
    scores: list[tuple[float, str]] = []
    for node in model.graph.node:
        for name in node.input:
            if name in weights:
                w = numpy_helper.to_array(weights[name]).astype(np.float64)
                scale = np.abs(w).max() / 127 or 1.0
                err = w - np.clip(np.round(w / scale), -128, 127) * scale
                scores.append((float((err ** 2).mean() / max((w ** 2).mean(), 1e-30)), node.name))
                break
    return [name for _, name in sorted(scores, key=lambda s: -s[0])]


def to_int8(path: Path, conversion: Conversion, calibration: list[Feed],
            check: Callable[[Path], tuple[bool, str, float | None]]) -> Int8Result:
    """Quantize `path` (an fp32 ONNX model) in place. `check` runs the validation gate on a candidate and says
    whether it passed, with a summary and the top-1 agreement. When it fails, retry keeping the most sensitive
    nodes in fp32, within conversion.int8FallbackAttempts; the result (passed or not) says what each attempt did."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    mode, method = conversion.int8_mode, conversion.int8_calibration
    # Beside the staging repository (<scratch>/repository/<model>/1/model.onnx): the conversion's own disk.
    with tempfile.TemporaryDirectory(dir=path.parents[3]) as tmp:
        work = Path(tmp)
        prepared, candidate, ranges = work / "float.onnx", work / "int8.onnx", work / "ranges.json"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        fp32_bytes = weight_bytes(path) or 1
        before = weighted_nodes(prepared)
        total = sum(before.values()) or 1
        ranking: list[tuple[str, float | None]] | None = None
        attempts: list[Attempt] = []
        kept: list[str] = []
        result: Int8Result | None = None
        reduce = False
        # Dynamic int8's first fallback keeps every node int8 with 7-bit weights: on x86 CPUs without VNNI the
        # 8-bit kernels saturate (16-bit sums of uint8 x int8 products), 7-bit ones cannot. Which is better depends
        # on the model and the CPU, so 8-bit comes first, as measured where the gate runs.
        seven_bit = 1 if mode == Int8Mode.DYNAMIC else 0
        for attempt in range(conversion.int8_fallback_attempts + 1):
            reduce = attempt == 1 and bool(seven_bit)
            if attempt and not reduce:
                if ranking is None:
                    ranking = sensitivity(prepared, mode, method, calibration, work, ranges, list(before))
                wanted = [name for name, _ in ranking[:2 ** (attempt - 1 - seven_bit)]]
                if not wanted or wanted == kept:
                    break  # nothing more to keep in fp32
                kept = wanted
            quantize(prepared, candidate, mode, method, calibration, kept, reduce_range=reduce, ranges=ranges)
            left = {_as_before(n, before): size for n, size in weighted_nodes(candidate).items()}
            float_bytes = sum(left.values())
            share = 1 - float_bytes / total
            if not attempt and share < MIN_QUANTIZED_SHARE:
                raise ConversionUnsupported(
                    f"int8 {mode} would quantize {share:.0%} of the model's weights: the quantizer leaves "
                    f"{sorted(left)[:8]} in float. Use int8Mode {'static' if mode == Int8Mode.DYNAMIC else 'dynamic'}"
                    " or precision fp16")
            if share < MIN_QUANTIZED_SHARE:  # checked on the result: never int8 in name only
                assert result is not None
                nodes = f"{len(kept)} node{'s' if len(kept) != 1 else ''}"
                result.stopped = (f"keeping {nodes} in fp32 would leave {share:.0%} of the weights in int8, "
                                  f"under the {MIN_QUANTIZED_SHARE:.0%} an int8 artifact must have")
                break
            passed, summary, top1 = check(candidate)
            bits = 7 if reduce else 8
            size = weight_bytes(candidate)
            attempts.append(Attempt(list(kept), passed, size, summary, top1, bits))
            result = Int8Result(str(mode), str(method) if mode == Int8Mode.STATIC else None,
                                sorted(n for n in before if n not in left), sorted(set(left) | set(kept)), share,
                                size / fp32_bytes, attempts, sensitivity=ranking or [],
                                weight_bits=bits)
            if passed:
                break
        assert result is not None
        shutil.copyfile(candidate, path)
        return result
