"""The validation gate on models whose outputs the test chooses: it cannot be fooled, and says why not.

The "models" are numpy functions in a Runnable, the converter's own interface for anything it runs; the samples
are what make_samples generates from a signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from modelyard.api.v1alpha1 import DataType
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ValidationFailed, ValidationInconclusive
from modelyard.convert.models import Runnable, Tensor
from modelyard.convert.validate import make_samples, validate

pytestmark = pytest.mark.converter

IMAGE = [Tensor("image", DataType.FP32, (4,))]
LOGITS = [Tensor("logits", DataType.FP32, (10,))]
W = np.random.default_rng(42).standard_normal((4, 10))


def model(fn: Callable[[NDArray[Any]], NDArray[Any]], inputs: list[Tensor] = IMAGE,
          outputs: list[Tensor] = LOGITS) -> Runnable:
    return Runnable(inputs, outputs, lambda feed: [fn(feed[inputs[0].name])], kind="onnx")


def gate(source: Runnable, candidate: Runnable, conversion: dict[str, Any] | None = None) -> Any:
    conv = Conversion.model_validate(conversion or {})
    return validate(source, candidate, make_samples(source.inputs, conv, True, 8), conv, True)


def logits(x: NDArray[Any]) -> NDArray[Any]:
    return 3 * x @ W  # a spread of about 3 x 2, over 10 classes


def test_a_faithful_copy_passes_with_the_numbers() -> None:
    report = gate(model(logits), model(lambda x: logits(x) + 1e-6), {"tolerance": {"classifierOutputs": ["logits"]}})
    assert report.passed and report.samples == 128 and report.top1_agreement == 1.0
    assert report.outputs[0].classes and report.outputs[0].classes > 5


@pytest.mark.parametrize(("source", "words"), [
    (lambda x: np.zeros((len(x), 10), np.float32) + 0.5, "hardly varies"),
    (lambda x: (logits(x) * 1e-15).astype(np.float32), "hardly varies"),
])
def test_degenerate_outputs_are_inconclusive_not_passed(source: Callable[..., Any], words: str) -> None:
    with pytest.raises(ValidationInconclusive, match=words):
        gate(model(source), model(source))


def test_a_classifier_that_puts_every_sample_in_one_class_is_inconclusive() -> None:
    one_class = model(lambda x: logits(x) + np.eye(10)[3] * 100)
    with pytest.raises(ValidationInconclusive, match="every sample of logits in class 3"):
        gate(one_class, one_class, {"tolerance": {"classifierOutputs": ["logits"]}})


def test_int8_defaults_refuse_logits_off_by_half_their_spread() -> None:
    def off(x: NDArray[Any]) -> NDArray[Any]:
        out = logits(x)
        out[0, 0] += 1.7
        return out

    with pytest.raises(ValidationFailed, match=r"max abs error 1.7 on a spread of"):
        gate(model(logits), model(off), {"precision": "int8"})


def test_a_declared_classifier_is_judged_by_top1_even_within_atol() -> None:
    def swapped(x: NDArray[Any]) -> NDArray[Any]:  # a few near-ties flipped by a change far below atol
        out = logits(x)
        top2 = np.sort(out, axis=1)[:, -2:]
        flip = (top2[:, 1] - top2[:, 0]) < 0.02
        out[flip] += (out[flip] == top2[flip, 1:]) * -0.03
        return out

    declared = {"precision": "fp32", "tolerance": {"classifierOutputs": ["logits"], "atol": 1.0}}
    with pytest.raises(ValidationFailed, match=r"classifier output logits: top-1 agreement 0\.9"):
        gate(model(logits), model(swapped), declared)
    report = gate(model(logits), model(swapped), {"tolerance": {"atol": 1.0}})
    assert report.passed and report.top1_agreement is None  # undeclared: top-1 judges nothing


def test_a_classifier_name_the_model_lacks_is_an_error() -> None:
    with pytest.raises(ValidationFailed, match=r"classifierOutputs names \['probs'\], which the model does not"):
        gate(model(logits), model(logits), {"tolerance": {"classifierOutputs": ["probs"]}})


IDS = [Tensor("input_ids", DataType.INT64, (-1,)), Tensor("attention_mask", DataType.INT64, (-1,)),
       Tensor("token_type_ids", DataType.INT64, (-1,)), Tensor("position_ids", DataType.INT64, (-1,))]


def test_generated_inputs_vary_their_length_and_suit_their_names() -> None:
    conv = Conversion.model_validate({"precision": "int8", "samples": {"intRanges": {"input_ids": [5, 7]}}})
    samples = make_samples(IDS, conv, True, 8)
    lengths = [feed["input_ids"].shape[1] for feed in samples.validation]
    assert lengths[:4] == [8, 16, 11, 5] and samples.lengths == lengths
    for feed in samples.validation:
        assert set(np.unique(feed["input_ids"])) <= {5, 6}
        mask = feed["attention_mask"]
        assert (mask[:, 0] == 1).all() and (np.diff(mask, axis=1) <= 0).all()  # ones, then padding
        assert set(np.unique(feed["token_type_ids"])) <= {0, 1}
        assert (feed["position_ids"] == np.arange(feed["input_ids"].shape[1])).all()


def test_calibration_never_sees_a_validation_sample() -> None:
    samples = make_samples(IMAGE, Conversion.model_validate({"precision": "int8"}), True, 8)
    assert (samples.count, samples.calibration_count) == (128, 64)
    seen = {row.tobytes() for feed in samples.validation for row in feed["image"]}
    assert not any(row.tobytes() in seen for feed in samples.calibration for row in feed["image"])


def test_a_model_that_fixed_its_length_at_export_fails() -> None:
    ids = [Tensor("ids", DataType.INT64, (-1,))]
    out = [Tensor("pooled", DataType.FP32, (2,))]
    rng = np.random.default_rng(1)
    table = rng.standard_normal((100, 2))

    def source(x: NDArray[Any]) -> NDArray[Any]:
        return table[x].mean(axis=1)

    def fixed(x: NDArray[Any]) -> NDArray[Any]:
        if x.shape[1] != 8:
            raise RuntimeError(f"shape mismatch: expected length 8, got {x.shape[1]}")
        return source(x)

    with pytest.raises(ValidationFailed, match=r"the converted model fails on inputs of shapes \{'ids': \[8, 16\]\}"):
        gate(model(source, ids, out), model(fixed, ids, out))


def test_the_users_samples_split_into_calibration_and_validation(tmp_path: Any) -> None:
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    np.savez(tmp_path / "s.npz", image=x)
    conv = Conversion.model_validate({"precision": "int8", "samples": {"uri": str(tmp_path / "s.npz")}})
    samples = make_samples(IMAGE, conv, True, 8)
    assert (samples.count, samples.calibration_count) == (30, 10)
    assert np.array_equal(np.concatenate([f["image"] for f in samples.calibration]), x[:10])
    assert np.array_equal(np.concatenate([f["image"] for f in samples.validation]), x[10:])
    np.savez(tmp_path / "one.npz", image=x[:1])
    with pytest.raises(ValidationInconclusive, match="has 1 sample: int8 needs some to calibrate"):
        make_samples(IMAGE, Conversion.model_validate({"precision": "int8",
                                                       "samples": {"uri": str(tmp_path / "one.npz")}}), True, 8)


def test_outputs_are_matched_by_name_not_position() -> None:
    two = [Tensor("scores", DataType.FP32, (10,)), Tensor("embedding", DataType.FP32, (10,))]

    def both(x: NDArray[Any]) -> list[NDArray[Any]]:
        return [logits(x), 2 * logits(x) + 1]

    source = Runnable(IMAGE, two, lambda feed: both(feed["image"]), kind="onnx")
    swapped = Runnable(IMAGE, two[::-1], lambda feed: both(feed["image"])[::-1], kind="onnx")
    report = gate(source, swapped)
    assert report.passed and [o.name for o in report.outputs] == ["scores", "embedding"]
