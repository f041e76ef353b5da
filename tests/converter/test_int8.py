"""INT8 that keeps accuracy: the accuracy-aware fallback on a trained CNN, and artifacts that say what they are."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from convert_models import CNN_SIGNATURE, ReferenceCNN, TemplateTask, save_traced, source, trained
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ConversionUnsupported, ValidationFailed
from modelyard.convert.pipeline import Request, convert

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")
CPU = Serving.model_validate({"gpus": 0, "maxBatchSize": 32})


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference CNN trained on a task with real ambiguity (about half its answers right), with the task's
    samples as the user's data: 256 to validate, 64 to calibrate."""
    d = tmp_path_factory.mktemp("int8")
    task = TemplateTask(noise=6.0)
    torch.manual_seed(0)
    model = trained(ReferenceCNN(), task, steps=100)
    save_traced(model, d / "cnn.pt", task.sample(2, 3)[0])
    task.save(d / "validation.npz", 256, 11)
    task.save(d / "calibration.npz", 64, 12)
    return d


def request(d: Path, **conversion: Any) -> Request:
    conv = {"precision": "int8", "tolerance": {"classifierOutputs": ["logits"]},
            "samples": {"uri": str(d / "validation.npz"), "calibrationUri": str(d / "calibration.npz")}, **conversion}
    return Request("cnn", ModelSource.model_validate(source(str(d / "cnn.pt"), "torchscript", CNN_SIGNATURE)),
                   Conversion.model_validate(conv), CPU)


def test_plain_int8_of_a_trained_cnn_fails_the_gate(trained_cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match=r"top-1 agreement 0\.9[0-8]\d* \(needs 0\.99\).*int8FallbackAttempts "
                       "is 0"):
        convert(request(trained_cnn, int8FallbackAttempts=0), tmp_path / "store")


def test_the_fallback_keeps_the_sensitive_nodes_in_fp32_and_passes(trained_cnn: Path, tmp_path: Path) -> None:
    manifest = convert(request(trained_cnn), tmp_path / "store")
    v, int8 = manifest["validation"], manifest["int8"]
    assert v["passed"] and v["top1_agreement"] >= 0.99 and v["samples"] == 256
    assert v["calibration_samples"] == 64
    assert int8["sizeRatio"] <= 0.35  # the target: >= 99% top-1 at <= 35% of the fp32 size
    attempts = int8["attempts"]
    assert not attempts[0]["passed"] and attempts[-1]["passed"] and attempts[-1]["keptFloat"] >= 1
    assert int8["keptFloat"] and int8["quantizedNodes"]  # what stayed fp32, what is int8: both named
    assert not set(int8["keptFloat"]) & set(int8["quantizedNodes"])
    # What stayed fp32 is what measured most sensitive: each node's error with it alone kept in fp32, ranked. Which
    # layer that is depends on the trained weights (the first convolution on one torch build, the head on another);
    # that the kept ones are the ranking's head does not.
    ranking = int8["sensitivity"]
    errors = [r["errorKeptAlone"] for r in ranking]
    assert len(ranking) == len(int8["keptFloat"]) + len(int8["quantizedNodes"])  # every weighted node, all measured
    assert None not in errors and errors == sorted(errors) and errors[0] < errors[-1], ranking
    assert set(int8["keptFloat"]) == {r["node"] for r in ranking[:attempts[-1]["keptFloat"]]}, (int8, ranking)
    assert 0.5 <= int8["weightShareInt8"] < 1.0


class Recurrent(torch.nn.Module):
    """An LSTM over a sequence of 8-d vectors and a linear head: static QDQ int8 quantizes the head only."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 64, batch_first=True)
        self.head = torch.nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


LSTM_SIGNATURE = {"inputs": [{"name": "x", "dataType": "FP32", "shape": [-1, 8]}],
                  "outputs": [{"name": "y", "dataType": "FP32", "shape": [4]}]}


def test_int8_that_would_leave_most_weights_float_is_refused_not_labelled_int8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "lstm.pt"
    torch.jit.save(torch.jit.script(Recurrent().eval()), str(path))
    src = ModelSource.model_validate(source(str(path), "torchscript", LSTM_SIGNATURE))
    with pytest.raises(ConversionUnsupported, match=r"int8 static would quantize \d+% of the model's weights.*"
                       r"Use int8Mode dynamic"):
        convert(Request("lstm", src, Conversion.model_validate({"precision": "int8"}), CPU), tmp_path / "store")
    dynamic = Conversion.model_validate({"precision": "int8", "int8Mode": "dynamic", "tolerance": {"atol": 1.0}})
    manifest = convert(Request("lstm", src, dynamic, CPU), tmp_path / "store")
    assert manifest["int8"]["weightShareInt8"] > 0.9 and manifest["int8"]["mode"] == "dynamic"


class TwoLayers(torch.nn.Module):
    """Two weighted nodes of very different sizes: keeping either in fp32 leaves under half the weights int8, or
    keeping both leaves none."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = torch.nn.Linear(64, 256)
        self.head = torch.nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.wide(x)))


TWO_LAYERS_SIGNATURE = {"inputs": [{"name": "x", "dataType": "FP32", "shape": [64]}],
                        "outputs": [{"name": "y", "dataType": "FP32", "shape": [4]}]}


def test_the_fallback_never_publishes_int8_below_the_int8_weight_share(tmp_path: Path) -> None:
    """A tolerance no int8 holds: the fallback would end keeping every node in fp32 and call that int8 (share 0.0,
    1.0x the size). It stops at the share floor instead, and the conversion is refused with the reason."""
    from modelyard.convert.quantize import MIN_QUANTIZED_SHARE

    torch.manual_seed(0)
    path = tmp_path / "two.pt"
    torch.jit.save(torch.jit.script(TwoLayers().eval()), str(path))
    src = ModelSource.model_validate(source(str(path), "torchscript", TWO_LAYERS_SIGNATURE))
    strict = Conversion.model_validate({"precision": "int8", "int8Mode": "dynamic", "int8FallbackAttempts": 4,
                                        "tolerance": {"atol": 1e-7, "rtol": 0.0}})
    with pytest.raises(ValidationFailed, match=r"the fallback stopped: keeping \d nodes? in fp32 would leave \d+% of "
                       r"the weights in int8, under the 50% an int8 artifact must have") as err:
        convert(Request("two", src, strict, CPU), tmp_path / "store")
    assert MIN_QUANTIZED_SHARE == 0.5
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir()), "an int8 was published"
    print(err.value.message)


def test_the_size_ratio_counts_each_weight_once_and_unused_ones_not_at_all(tmp_path: Path) -> None:
    """An fp32 model as exporters write some: a tied weight stored twice, and a weight nothing reads (the
    quantizer's preprocessing drops it). Against the file's bytes the int8 artifact looked 0.17x the size; its
    weights are 0.25x the model's, each distinct weight counted once: what int8 really saves."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from modelyard.convert.quantize import weight_bytes

    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    unused = rng.standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="tied")], "tied",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])],
        [numpy_helper.from_array(w, "w1"), numpy_helper.from_array(w.copy(), "w2"),
         numpy_helper.from_array(unused, "unused")])
    path = tmp_path / "tied.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert weight_bytes(path) == w.nbytes

    conversion = Conversion.model_validate({"precision": "int8", "int8Mode": "dynamic",
                                            "tolerance": {"atol": 100.0, "rtol": 1.0}})  # about size only
    manifest = convert(Request("tied", ModelSource.model_validate(source(str(path), "onnx", None)), conversion,
                               CPU), tmp_path / "store")
    int8 = manifest["int8"]
    artifact = Path(manifest["repository"]) / "tied" / "1" / "model.onnx"
    assert artifact.exists(), artifact
    assert path.stat().st_size > 2.9 * w.nbytes  # the file: the weight twice, and the unused one
    assert artifact.stat().st_size / path.stat().st_size < 0.2  # what the file sizes said
    assert 0.25 <= int8["sizeRatio"] <= 0.27, int8  # int8 is a quarter of fp32, with its scales and zero points
    assert int8["attempts"][-1]["bytes"] == weight_bytes(artifact)
