"""The validation gate: the converted model must compute what the source computes, within tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ValidationFailed
from modelyard.convert.models import DTYPES, Runnable, Tensor


@dataclass
class OutputReport:
    name: str
    max_abs_error: float
    max_rel_error: float
    within_tolerance: bool
    top1_agreement: float | None = None


@dataclass
class ValidationReport:
    samples: int
    atol: float
    rtol: float
    min_top1_agreement: float
    passed: bool
    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None
    outputs: list[OutputReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        top1 = f", top-1 agreement {self.top1_agreement:.4f}" if self.top1_agreement is not None else ""
        return (
            f"{self.samples} samples: max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}"
            f"{top1} (atol {self.atol:g}, rtol {self.rtol:g})"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_samples(inputs: list[Tensor], conversion: Conversion, batched: bool) -> dict[str, NDArray[Any]]:
    """Sample inputs: from the user's .npz, or generated from the signature (variable dimensions become 8)."""
    if conversion.samples.uri:
        with np.load(Path(conversion.samples.uri)) as data:
            missing = [t.name for t in inputs if t.name not in data]
            if missing:
                raise ValidationFailed(f"the samples file has no array for inputs {missing}")
            return {t.name: np.asarray(data[t.name]) for t in inputs}
    rng = np.random.default_rng(conversion.samples.seed)
    n = conversion.samples.count if batched else 1
    out = {}
    for t in inputs:
        shape = (n, *[8 if d == -1 else d for d in t.dims]) if batched else tuple(8 if d == -1 else d for d in t.dims)
        dtype = DTYPES.get(t.data_type, np.float32)
        if np.issubdtype(dtype, np.floating):
            out[t.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            out[t.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            low, high = conversion.samples.int_range
            out[t.name] = rng.integers(low, high, shape).astype(dtype)
    return out


def batches(samples: dict[str, NDArray[Any]], size: int) -> list[dict[str, NDArray[Any]]]:
    n = len(next(iter(samples.values())))
    return [{k: v[i:i + size] for k, v in samples.items()} for i in range(0, n, size)]


def _run_all(model: Runnable, chunks: list[dict[str, NDArray[Any]]], batched: bool) -> list[NDArray[Any]]:
    results = [model.run(chunk) for chunk in chunks]
    if not batched:
        return results[0]
    return [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]


def validate(source: Runnable, candidate: Runnable, samples: dict[str, NDArray[Any]], conversion: Conversion,
             batched: bool, batch_size: int, declared: list[Tensor] | None = None) -> ValidationReport:
    """Run both models on the samples and compare every output. Raises ValidationFailed with the numbers."""
    atol, rtol = conversion.tolerances()
    min_top1 = conversion.min_top1()
    chunks = batches(samples, batch_size) if batched else [samples]
    n = len(next(iter(samples.values()))) if batched else 1
    want = _run_all(source, chunks, batched)
    got = _run_all(candidate, chunks, batched)
    problems: list[str] = []
    reports: list[OutputReport] = []
    names = [t.name for t in candidate.outputs] or [f"output{i}" for i in range(len(got))]
    if len(want) != len(got):
        problems.append(f"the source returns {len(want)} outputs, the converted model {len(got)}")
    for i, (ref, out) in enumerate(zip(want, got, strict=False)):
        name = names[i] if i < len(names) else f"output{i}"
        if declared and i < len(declared):
            dims = declared[i].dims
            shape = out.shape[1:] if batched else out.shape
            if len(shape) != len(dims) or any(d not in (-1, s) for d, s in zip(dims, shape, strict=False)):
                problems.append(f"output {name} has shape {list(shape)} but the signature declares {list(dims)}")
        if not np.isfinite(ref.astype(np.float64)).all():
            problems.append(f"the source model's output {name} has {int((~np.isfinite(ref)).sum())} NaN/Inf values "
                            "on the samples: there is nothing sound to compare against")
            continue
        if not np.isfinite(out.astype(np.float64)).all():
            problems.append(f"output {name} has {int((~np.isfinite(out)).sum())} NaN/Inf values")
            continue
        if ref.shape != out.shape:
            problems.append(f"output {name} has shape {list(out.shape)}, the source's has {list(ref.shape)}")
            continue
        r, o = ref.astype(np.float64), out.astype(np.float64)
        diff = np.abs(o - r)
        significant = np.abs(r) > atol
        rel = float((diff[significant] / np.abs(r[significant])).max()) if significant.any() else 0.0
        within = bool(np.all(diff <= atol + rtol * np.abs(r)))
        top1 = None
        if r.ndim == 2 and r.shape[1] > 1:
            top1 = float((r.argmax(axis=1) == o.argmax(axis=1)).mean())
        reports.append(OutputReport(name, float(diff.max(initial=0.0)), rel, within, top1))
        if not within and not (top1 is not None and top1 >= min_top1):
            extra = f", top-1 agreement {top1:.4f} < {min_top1}" if top1 is not None else ""
            problems.append(
                f"output {name} is outside tolerance: max abs error {diff.max():.3g}, max rel error {rel:.3g} "
                f"(atol {atol:g}, rtol {rtol:g}){extra}"
            )
    top1s = [r.top1_agreement for r in reports if r.top1_agreement is not None]
    report = ValidationReport(
        samples=n, atol=atol, rtol=rtol, min_top1_agreement=min_top1, passed=not problems,
        max_abs_error=max((r.max_abs_error for r in reports), default=float("nan")),
        max_rel_error=max((r.max_rel_error for r in reports), default=float("nan")),
        top1_agreement=min(top1s) if top1s else None, outputs=reports, problems=problems,
    )
    if problems:
        raise ValidationFailed("; ".join(problems) + (f" [{report.summary()}]" if reports else ""))
    return report
