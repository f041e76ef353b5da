"""The validation gate: the converted model must compute what the source computes, within tolerance.

Tolerances are relative to each output's spread (the standard deviation of the source's output over the
samples), so they mean the same on logits of 1e3 and on embeddings of 1e-2. A gate that cannot tell right from
wrong does not pass: an output that hardly varies over the samples, or a classifier output that puts every sample
in one class, makes the check inconclusive (ValidationInconclusive) with the numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.api.v1alpha1.conversion import Conversion, Precision
from modelyard.convert.errors import (
    ConversionError,
    ConversionUnsupported,
    SourceUnavailable,
    SourceUnreadable,
    ValidationFailed,
    ValidationInconclusive,
)
from modelyard.convert.models import DTYPES, Runnable, Tensor

Feed = dict[str, NDArray[Any]]

MIN_SPREAD = 1e-8
"""An output whose standard deviation over the samples is below this (or below 1e-6 of its magnitude) carries no
signal a comparison could check."""


@dataclass
class Samples:
    """Validation and calibration inputs, as the batches the models run: disjoint by construction."""

    validation: list[Feed]
    calibration: list[Feed]
    count: int
    calibration_count: int
    lengths: list[int]
    """The lengths variable dimensions took, batch by batch (empty when the signature has none)."""


@dataclass
class OutputReport:
    name: str
    spread: float
    max_abs_error: float
    max_rel_error: float
    rms_error: float
    """Root-mean-square error as a share of the spread."""
    within_tolerance: bool
    classifier: bool = False
    top1_agreement: float | None = None
    classes: int | None = None
    """How many distinct arg-max classes the source gave over the samples (classifier outputs)."""


@dataclass
class ValidationReport:
    samples: int
    calibration_samples: int
    lengths: list[int]
    atol: float | None
    atol_spread: float
    rtol: float
    rms: float
    min_top1_agreement: float
    passed: bool
    inconclusive: bool
    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None
    outputs: list[OutputReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        top1 = f", top-1 agreement {self.top1_agreement:.4f}" if self.top1_agreement is not None else ""
        atol = f"atol {self.atol:g}" if self.atol is not None else f"atol {self.atol_spread:g} x spread"
        return (f"{self.samples} samples: max abs error {self.max_abs_error:.3g}, max rel error "
                f"{self.max_rel_error:.3g}{top1} ({atol}, rtol {self.rtol:g})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def error(self) -> ValidationFailed | ValidationInconclusive:
        message = "; ".join(self.problems) + (f" [{self.summary()}]" if self.outputs else "")
        return ValidationInconclusive(message) if self.inconclusive else ValidationFailed(message)


def _int_values(name: str, shape: tuple[int, ...], dtype: Any, conversion: Conversion,
                rng: np.random.Generator) -> NDArray[Any]:
    """Integer inputs by what they are: masks are prefixes of ones, token types 0/1, positions 0..n-1, the rest
    token ids in intRange; intRanges overrides any of them by name."""
    ranges = conversion.samples.int_ranges or {}
    lowered = name.lower()
    if name in ranges:
        low, high = ranges[name]
        return rng.integers(low, high, shape).astype(dtype)
    if "mask" in lowered and shape:
        length = shape[-1]
        kept = rng.integers(1, length + 1, shape[:-1])[..., None]
        return (np.arange(length) < kept).astype(dtype)
    if "type" in lowered or "segment" in lowered:
        return rng.integers(0, 2, shape).astype(dtype)
    if "position" in lowered and shape:
        return np.broadcast_to(np.arange(shape[-1]), shape).astype(dtype)
    low, high = conversion.samples.int_range
    return rng.integers(low, high, shape).astype(dtype)


def _generate(inputs: list[Tensor], conversion: Conversion, batched: bool, count: int, batch_size: int,
              rng: np.random.Generator, lengths: list[int]) -> tuple[list[Feed], list[int]]:
    variable = any(d == -1 for t in inputs for d in t.dims)
    feeds: list[Feed] = []
    used: list[int] = []
    sizes = [min(batch_size, count - i) for i in range(0, count, batch_size)] if batched else [0] * count
    for k, n in enumerate(sizes):
        length = lengths[k % len(lengths)]
        feed: Feed = {}
        for t in inputs:
            dims = tuple(length if d == -1 else d for d in t.dims)
            shape = (n, *dims) if batched else dims
            dtype = DTYPES.get(t.data_type, np.float32)
            if np.issubdtype(dtype, np.floating):
                feed[t.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feed[t.name] = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                feed[t.name] = _int_values(t.name, shape, dtype, conversion, rng)
        feeds.append(feed)
        if variable:
            used.append(length)
    return feeds, used


def _load(uri: str, inputs: list[Tensor]) -> Feed:
    try:
        data = np.load(Path(uri))
    except FileNotFoundError as exc:
        raise SourceUnavailable(f"the samples file {uri} does not exist") from exc
    except Exception as exc:  # not an .npz, or a pickled object array (allow_pickle stays off)
        raise SourceUnreadable(f"the samples file {Path(uri).name} is not an .npz of arrays: "
                               f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    if not hasattr(data, "files"):
        raise SourceUnreadable(f"the samples file {Path(uri).name} is a single array; save an .npz with one array "
                               "per input name (numpy.savez)")
    with data:
        missing = [t.name for t in inputs if t.name not in data]
        if missing:
            raise ValidationFailed(f"the samples file {Path(uri).name} has no array for inputs {missing}")
        try:
            return {t.name: np.asarray(data[t.name]) for t in inputs}
        except ValueError as exc:  # an object array: it would have to be unpickled, and never is
            raise SourceUnreadable(f"the samples file {Path(uri).name} is not an .npz of arrays: it holds pickled "
                                   f"objects, which are never unpickled ({exc})") from exc


def _split(arrays: Feed, start: int, stop: int, size: int) -> list[Feed]:
    return [{k: v[i:min(i + size, stop)] for k, v in arrays.items()} for i in range(start, stop, size)]


def _refuse_oversized(inputs: list[Tensor], conversion: Conversion, count: int) -> None:
    """Generated samples are bounded like a samples file (conversion.maxSamplesSize): a signature that declares
    1e6 x 1e6 inputs is refused before anything is allocated."""
    longest = max(conversion.samples.lengths)
    per_sample = sum(int(np.prod([longest if d == -1 else d for d in t.dims], dtype=np.float64))
                     * np.dtype(DTYPES.get(t.data_type, np.float32)).itemsize for t in inputs)
    if per_sample * count > conversion.samples_limit():
        shapes = ", ".join(f"{t.name} {list(t.dims)}" for t in inputs)[:300]
        raise ConversionUnsupported(
            f"{count} samples of the signature's inputs ({shapes}) "
            f"take {per_sample * count / (1 << 30):.3g} GiB, more than conversion.maxSamplesSize allows: check "
            "the signature's shapes, lower samples.count, or give samples.uri")


def make_samples(inputs: list[Tensor], conversion: Conversion, batched: bool, batch_size: int) -> Samples:
    """The user's samples (.npz), or samples generated from the signature; calibration never sees a validation
    sample."""
    s = conversion.samples
    calibrates = conversion.precision == Precision.INT8  # static calibrates; both rank nodes for the fallback
    if s.uri:
        data = _load(s.uri, inputs)
        if not batched:  # an unbatched model takes the arrays as they are
            return Samples([data], [data] if calibrates and not s.calibration_uri else [], 1, 1, [])
        n = len(next(iter(data.values())))
        cut = 0
        if calibrates and not s.calibration_uri:
            if n < 2:
                raise ValidationInconclusive(
                    f"the samples file {Path(s.uri).name} has {n} sample: int8 needs some to calibrate and "
                    "others to validate; add samples or set conversion.samples.calibrationUri")
            cut = max(1, n // 4)
        calibration = _split(data, 0, cut, batch_size) if cut else []
        if s.calibration_uri:
            cal = _load(s.calibration_uri, inputs)
            cal_n = len(next(iter(cal.values())))
            calibration, cut_n = _split(cal, 0, cal_n, batch_size), cal_n
        else:
            cut_n = cut
        return Samples(_split(data, cut, n, batch_size), calibration, n - cut, cut_n, [])
    _refuse_oversized(inputs, conversion, s.count + (s.calibration_count if calibrates else 0))
    validation, lengths = _generate(inputs, conversion, batched, s.count, batch_size,
                                    np.random.default_rng(s.seed), s.lengths)
    generated: list[Feed] = []
    if calibrates:
        if s.calibration_uri:
            cal = _load(s.calibration_uri, inputs)
            cal_n = len(next(iter(cal.values()))) if batched else 1
            return Samples(validation, _split(cal, 0, cal_n, batch_size) if batched else [cal], s.count, cal_n,
                           lengths)
        # Another stream of the same seed: no calibration sample is a validation sample.
        generated, _ = _generate(inputs, conversion, batched, s.calibration_count, batch_size,
                                 np.random.default_rng([s.seed, 1]), s.lengths)
    return Samples(validation, generated, s.count, s.calibration_count if calibrates else 0, lengths)


def run_all(model: Runnable, feeds: list[Feed], what: str) -> list[list[NDArray[Any]]]:
    """Each batch's outputs. A model that fails on a batch fails the gate, naming the shapes that broke it."""
    results = []
    for feed in feeds:
        try:
            results.append(model.run(feed))
        except ConversionError:  # the converter's own refusal of what the model returns: it says what to do
            raise
        except Exception as exc:
            shapes = {k: list(v.shape) for k, v in feed.items()}
            error = ValidationInconclusive if what == "source" else ValidationFailed
            hint = ""
            if "Guard failed" in str(exc) and _recurrent(model.torch_module):
                hint = (" (the torch.export program fixed this dimension at export, and torch.export cannot make "
                        "a recurrent layer's sequence length dynamic (nn.LSTM, nn.GRU, nn.RNN: a torch.export.Dim "
                        "for it is refused with 'Constraints violated'). Save the model traced instead, "
                        "torch.jit.trace then torch.jit.save to a .pt, format torchscript: its ONNX export keeps "
                        "the length variable. Or give samples of the exported length in conversion.samples)")
            elif "Guard failed" in str(exc):
                hint = (" (the torch.export program fixed this dimension at export: export it with a "
                        "torch.export.Dim for it, or give samples of that shape in conversion.samples)")
            elif what == "source":
                hint = " (the samples do not suit the model: set conversion.samples)"
            raise error(f"the {what} model fails on inputs of shapes {shapes}: {type(exc).__name__}: "
                        f"{_gist(str(exc))}{hint}") from exc
    return results


def _recurrent(module: Any) -> bool:
    """Whether a torch.export program computes a recurrent layer (aten.lstm, gru, rnn_tanh, rnn_relu)."""
    graph = getattr(module, "graph", None)
    nodes = getattr(graph, "nodes", [])
    return any(any(op in str(getattr(n, "target", "")) for op in ("aten.lstm", "aten.gru", "aten.rnn_"))
               for n in nodes)


def _gist(message: str, limit: int = 500) -> str:
    """An error's point: TorchScript puts its traceback first and the error last, so keep both ends."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(message) <= limit or len(lines) < 2:
        return message[:limit]
    return f"{lines[0][:150]} ... {lines[-1][:limit - 160]}"


def _classifier_names(conversion: Conversion, names: list[str], problems: list[str]) -> set[str]:
    declared = set(conversion.tolerance.classifier_outputs or [])
    unknown = sorted(declared - set(names))
    if unknown:
        problems.append(f"conversion.tolerance.classifierOutputs names {unknown}, which the model does not output "
                        f"(its outputs: {names})")
    return declared


def compare(want: list[list[NDArray[Any]]], candidate: Runnable, samples: Samples, conversion: Conversion,
            batched: bool, names: list[str], declared: list[Tensor] | None = None) -> ValidationReport:
    """Compare the candidate's outputs on the validation batches with the source's (`want`); never raises for
    a comparison that fails, the report says so."""
    atol_abs, atol_spread, rtol = conversion.tolerances()
    min_top1, rms_tol = conversion.min_top1(), conversion.rms()
    got = run_all(candidate, samples.validation, "converted")
    own = [t.name for t in candidate.outputs]
    if own != names and sorted(own) == sorted(names):  # the same outputs in another order (tf2onnx, exporters)
        got = [[result[own.index(name)] for name in names] for result in got]
    problems: list[str] = []
    inconclusive: list[str] = []
    reports: list[OutputReport] = []
    classifiers = _classifier_names(conversion, names, problems)
    if want and got and len(want[0]) != len(got[0]):
        problems.append(f"the source returns {len(want[0])} outputs, the converted model {len(got[0])}")
    for i in range(min(len(want[0]), len(got[0])) if want and got else 0):
        name = names[i] if i < len(names) else f"output{i}"
        refs = [w[i] for w in want]
        outs = [g[i] for g in got]
        bad = _shape_problem(name, refs, outs, batched, declared[i].dims if declared and i < len(declared) else None)
        if bad:
            problems.append(bad)
            continue
        r = np.concatenate([x.astype(np.float64).ravel() for x in refs])
        o = np.concatenate([x.astype(np.float64).ravel() for x in outs])
        if not np.isfinite(r).all():
            problems.append(f"the source model's output {name} has {int((~np.isfinite(r)).sum())} NaN/Inf values "
                            "on the samples: there is nothing sound to compare against")
            continue
        if not np.isfinite(o).all():
            problems.append(f"output {name} has {int((~np.isfinite(o)).sum())} NaN/Inf values")
            continue
        spread = float(r.std())
        magnitude = float(np.abs(r).max(initial=0.0))
        atol = atol_abs if atol_abs is not None else atol_spread * spread
        diff = np.abs(o - r)
        significant = np.abs(r) > max(atol, MIN_SPREAD)
        rel = float((diff[significant] / np.abs(r[significant])).max()) if significant.any() else float("nan")
        rms = float(np.sqrt((diff ** 2).mean())) / spread if spread > 0 else float("inf")
        report = OutputReport(name, spread, float(diff.max(initial=0.0)), rel, rms,
                              bool(np.all(diff <= atol + rtol * np.abs(r))))
        reports.append(report)
        if spread < MIN_SPREAD or spread <= 1e-6 * magnitude:
            inconclusive.append(f"the source's output {name} hardly varies over the samples (standard deviation "
                                f"{spread:.3g}, largest magnitude {magnitude:.3g}): agreement on it proves nothing; "
                                "give samples that exercise the model (conversion.samples.uri)")
            continue
        if name in classifiers:
            report.classifier = True
            classes_ref = np.concatenate([x.reshape(-1, x.shape[-1]).argmax(axis=1) for x in refs])
            classes_out = np.concatenate([x.reshape(-1, x.shape[-1]).argmax(axis=1) for x in outs])
            report.top1_agreement = float((classes_ref == classes_out).mean())
            report.classes = len(np.unique(classes_ref))
            report.within_tolerance = report.top1_agreement >= min_top1 and rms <= rms_tol
            if report.classes < 2:
                inconclusive.append(f"the source puts every sample of {name} in class {int(classes_ref[0])}: top-1 "
                                    "agreement on it proves nothing; give samples that reach several classes "
                                    "(conversion.samples.uri)")
            elif not report.within_tolerance:
                problems.append(f"classifier output {name}: top-1 agreement {report.top1_agreement:.4f} (needs "
                                f"{min_top1}), rms error {rms:.3g} of its spread {spread:.3g} (needs <= {rms_tol:g})")
        elif not report.within_tolerance:
            problems.append(
                f"output {name} is outside tolerance: max abs error {report.max_abs_error:.3g} on a spread of "
                f"{spread:.3g}, max rel error {rel:.3g} (atol {atol:.3g}, rtol {rtol:g})")
        elif rms * spread > max(atol, MAX_RMS_OF_SPREAD * spread):
            # rtol lets single elements on large values err by a share of the value; on the whole, the error must
            # stay well under the output's variation, or that is lost (values on a large offset, in fp16: one
            # constant, each element only 1e-4 off).
            report.within_tolerance = False
            problems.append(
                f"output {name} loses its variation: rms error {rms * spread:.3g} is {rms:.3g} of its spread "
                f"{spread:.3g} (needs <= {MAX_RMS_OF_SPREAD:g}, or atol {atol:.3g}); its values reach "
                f"{magnitude:.3g}, where rtol {rtol:g} allows each element an error its variation does not survive")
    top1s = [r.top1_agreement for r in reports if r.top1_agreement is not None]
    return ValidationReport(
        samples=samples.count, calibration_samples=samples.calibration_count, lengths=samples.lengths,
        atol=atol_abs, atol_spread=atol_spread, rtol=rtol, rms=rms_tol, min_top1_agreement=min_top1,
        passed=not problems and not inconclusive, inconclusive=bool(inconclusive) and not problems,
        max_abs_error=max((r.max_abs_error for r in reports), default=float("nan")),
        max_rel_error=max((r.max_rel_error for r in reports if r.max_rel_error == r.max_rel_error),
                          default=float("nan")),
        top1_agreement=min(top1s) if top1s else None, outputs=reports, problems=problems + inconclusive,
    )


def _shape_problem(name: str, refs: list[NDArray[Any]], outs: list[NDArray[Any]], batched: bool,
                   dims: tuple[int, ...] | None) -> str | None:
    for ref, out in zip(refs, outs, strict=True):
        shape = out.shape[1:] if batched else out.shape
        if dims is not None and (len(shape) != len(dims) or any(d not in (-1, s) for d, s in zip(dims, shape,
                                                                                                  strict=False))):
            return f"output {name} has shape {list(shape)} but the signature declares {list(dims)}"
        if ref.shape != out.shape:
            return f"output {name} has shape {list(out.shape)}, the source's has {list(ref.shape)}"
    return None


MAX_RMS_OF_SPREAD = 0.1
"""A non-classifier output's root-mean-square error, as a share of its spread, beyond which its variation is lost
whatever rtol allows each element (atol, when larger, raises it)."""


def validate(source: Runnable, candidate: Runnable, samples: Samples, conversion: Conversion, batched: bool,
             declared: list[Tensor] | None = None) -> ValidationReport:
    """Run both models on the validation samples and compare every output; raise with the numbers unless it
    passes."""
    want = run_all(source, samples.validation, "source")
    report = compare(want, candidate, samples, conversion, batched, output_names(source, candidate), declared)
    if not report.passed:
        raise report.error()
    return report


def output_names(source: Runnable, candidate: Runnable) -> list[str]:
    """The source's output names (what the user declared); the candidate's where the source has none."""
    return [t.name for t in source.outputs] or [t.name for t in candidate.outputs]
