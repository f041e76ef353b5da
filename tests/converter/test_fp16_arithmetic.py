"""fp16 is judged in fp16 arithmetic (modelyard.convert.transform.fp16_emulation): onnxruntime's CPU provider runs
an fp16 graph in fp32, so a model whose hidden values overflow fp16, or whose outputs sit on a large offset, passed
the gate before and serves nonsense on a GPU. Crafted models of both kinds are refused with the fp16 numbers; a
real model's numbers in the manifest are the fp16 ones."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from convert_models import CNN, CNN_SIGNATURE, save_torchscript, source
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ValidationFailed
from modelyard.convert.pipeline import Request, convert
from modelyard.convert.transform import fp16_emulation, to_fp16

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")

SIGNATURE = {"inputs": [{"name": "x", "dataType": "FP32", "shape": [8]}],
             "outputs": [{"name": "y", "dataType": "FP32", "shape": [4]}]}


class HiddenOverflow(torch.nn.Module):
    """Hidden activations in the tens of thousands to millions (over fp16's 65504), scaled back down: fine in fp32."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)
        with torch.no_grad():
            self.a.weight.mul_(1e5)
            self.b.weight.div_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class LargeOffset(torch.nn.Module):
    """Small signal on a 10000 offset: fp16's step there is 8, so in fp16 every output is one constant."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) * 0.5 + 10000.0


def _source(module: torch.nn.Module, path: Path) -> dict[str, Any]:
    torch.jit.save(torch.jit.trace(module.eval(), torch.zeros(1, 8)), str(path))
    return {"uri": str(path), "format": "torchscript", "signature": SIGNATURE}


def _request(name: str, src: dict[str, Any]) -> Request:
    return Request(name, ModelSource.model_validate(src), Conversion.model_validate({"precision": "fp16"}),
                   Serving.model_validate({"maxBatchSize": 8}))


@pytest.mark.parametrize(("module", "words"), [
    (HiddenOverflow, "NaN/Inf values"),
    (LargeOffset, "max abs error"),
])
def test_what_fp16_arithmetic_breaks_is_refused_with_the_fp16_numbers(tmp_path: Path, module: type[torch.nn.Module],
                                                                      words: str) -> None:
    src = _source(module(), tmp_path / "m.pt")
    with pytest.raises(ValidationFailed) as caught:
        convert(_request("m", src), tmp_path / "store")
    assert words in caught.value.message, caught.value.message
    assert "\x1b" not in caught.value.message
    # The same models pass in fp32, and onnxruntime alone, computing the fp16 graph in fp32, sees nothing wrong.
    assert convert(Request("m", ModelSource.model_validate(src), Conversion(), Serving.model_validate(
        {"maxBatchSize": 8})), tmp_path / "store32")["validation"]["passed"]


def test_the_emulation_rounds_between_ops_where_onnxruntime_does_not(tmp_path: Path) -> None:
    model, x = LargeOffset().eval(), np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.from_numpy(x),), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    to_fp16(path)
    assert fp16_emulation(path, tmp_path / "emu.onnx") > 0
    hidden = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    emulated = ort.InferenceSession(str(tmp_path / "emu.onnx")).run(None, {"x": x})[0]
    want = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(hidden - want).max() < 0.01  # the CPU provider: fp32 inside, the fp16 error hidden
    assert len(np.unique(want)) == want.size and len(np.unique(emulated)) == 1  # fp16's step of 8 at 10000


def test_a_real_models_fp16_numbers_are_computed_in_fp16(tmp_path: Path) -> None:
    save_torchscript(CNN, tmp_path / "cnn.pt")
    src = source(str(tmp_path / "cnn.pt"), "torchscript", CNN_SIGNATURE)
    manifest = convert(Request("cnn", ModelSource.model_validate(src), Conversion.model_validate(
        {"precision": "fp16"}), Serving.model_validate({"maxBatchSize": 8})), tmp_path / "store")
    v = manifest["validation"]
    assert v["passed"] and v["arithmetic"].startswith("fp16: every fp16 tensor rounded to fp16 between ops")
    assert v["max_abs_error"] > 0
