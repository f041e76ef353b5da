"""Every failure the tests can think of, fed to the converter: each ends in a reason a person can act on, never
in a bare exception (which the container would report as ConversionFailed "failed unexpectedly")."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convert_models import CNN, CNN_SIGNATURE, NaNModel, keras_cnn, save_cnn_onnx, save_torchscript, source
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ConversionError
from modelyard.convert.main import run
from modelyard.convert.pipeline import Request, convert

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")
CPU = Serving.model_validate({"gpus": 0, "maxBatchSize": 8})


class Diff(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.diff(x.flatten(1), dim=1)[:, :10]


class Constant(CNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 0 + 1


def _junk(name: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).write_bytes(np.random.default_rng(0).bytes(2048))
        return d / name
    return make


def _torchscript(cls: type[torch.nn.Module]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        save_torchscript(cls, d / "m.pt")
        return d / "m.pt"
    return make


def _state_dict(d: Path) -> Path:
    torch.save(CNN().state_dict(), d / "cnn.pth")
    return d / "cnn.pth"


def _onnx(d: Path) -> Path:
    save_cnn_onnx(d / "cnn.onnx")
    return d / "cnn.onnx"


def _lambda_keras(d: Path) -> Path:
    import keras

    keras.Sequential([keras.Input((4,), name="x"), keras.layers.Lambda(lambda t: t + 1)]).save(str(d / "l.keras"))
    return d / "l.keras"


def _custom_keras(d: Path) -> Path:
    from keras_layers import custom_model

    custom_model(str(d / "custom.keras"))
    return d / "custom.keras"


def _keras(d: Path) -> Path:
    keras_cnn(d / "cnn.keras")
    return d / "cnn.keras"


def _npz(d: Path, **arrays: Any) -> str:
    np.savez(d / "samples.npz", **arrays)
    return str(d / "samples.npz")


# (case, how to make the source, format, signature, conversion (a function of the directory), reason, words)
CASES: list[tuple[str, Callable[[Path], Path], str, Any, Callable[[Path], dict[str, Any]], str, str]] = [
    ("missing file", lambda d: d / "nowhere.pt", "torchscript", CNN_SIGNATURE, lambda d: {},
     "SourceUnavailable", "does not exist"),
    ("pickled module", lambda d: (torch.save(CNN(), d / "m.pt"), d / "m.pt")[1], "pytorch", CNN_SIGNATURE,
     lambda d: {}, "SourceRefused", "arbitrary code"),
    ("junk as torchscript", _junk("m.pt"), "torchscript", CNN_SIGNATURE, lambda d: {}, "SourceRefused",
     "not a TorchScript archive"),
    ("junk as torch.export", _junk("m.pt2"), "pytorch", CNN_SIGNATURE, lambda d: {}, "SourceUnreadable",
     "not a torch.export archive"),
    ("junk as onnx", _junk("m.onnx"), "onnx", None, lambda d: {}, "SourceUnreadable", "is not an ONNX model"),
    ("junk as keras", _junk("m.keras"), "keras", None, lambda d: {}, "SourceUnreadable", "not a Keras model"),
    ("keras lambda", _lambda_keras, "keras", None, lambda d: {}, "SourceRefused", "holds Python code"),
    ("keras custom layers not named", _custom_keras, "keras", None, lambda d: {}, "SourceRefused",
     "uses classes from outside Keras"),
    ("keras custom layers not importable", _custom_keras, "keras", None,
     lambda d: {"kerasCustomObjects": ["modelyard_plugins.nowhere:ScaledDense",
                                        "modelyard_plugins.nowhere:Swish"]}, "SourceRefused",
     "cannot be imported"),
    ("junk savedmodel", lambda d: (_junk("saved_model.pb")(d), d)[1], "tensorflow-savedmodel", None, lambda d: {},
     "SourceUnreadable", "is not a SavedModel TensorFlow"),
    ("keras as savedmodel", _keras, "tensorflow-savedmodel", None, lambda d: {}, "SourceUnreadable",
     "not a SavedModel directory"),
    ("no signature", _torchscript(CNN), "torchscript", None, lambda d: {}, "ConversionUnsupported",
     "set spec.model.signature"),
    ("class not importable", _state_dict, "pytorch", CNN_SIGNATURE,
     lambda d: {"modelClass": "modelyard_plugins.nowhere:Model"},
     "SourceRefused", "cannot be imported"),
    ("class arguments wrong", _state_dict, "pytorch", CNN_SIGNATURE,
     lambda d: {"modelClass": "convert_models:CNN", "modelClassArgs": {"depth": 3}}, "ConversionFailed",
     "set conversion.modelClassArgs"),
    ("weights of another model", _state_dict, "pytorch", CNN_SIGNATURE,
     lambda d: {"modelClass": "convert_models:ReferenceCNN"}, "SourceUnreadable", "does not fit"),
    ("operator the exporter lacks", _torchscript(Diff), "torchscript", CNN_SIGNATURE, lambda d: {},
     "ConversionFailed", "Export the model with torch.export"),
    ("tensorrt without a gpu", _torchscript(CNN), "torchscript", CNN_SIGNATURE, lambda d: {"target": "tensorrt"},
     "ConversionUnsupported", "needs a GPU"),
    ("onnx to torchscript", _onnx, "onnx", None, lambda d: {"target": "torchscript"}, "ConversionUnsupported",
     "cannot be converted to TorchScript"),
    ("int8 torchscript", _torchscript(CNN), "torchscript", CNN_SIGNATURE,
     lambda d: {"target": "torchscript", "precision": "int8"}, "ConversionUnsupported", "use target onnx"),
    ("samples file missing", _torchscript(CNN), "torchscript", CNN_SIGNATURE,
     lambda d: {"samples": {"uri": str(d / "none.npz")}}, "SourceUnavailable", "does not exist"),
    ("samples not an npz", _torchscript(CNN), "torchscript", CNN_SIGNATURE,
     lambda d: {"samples": {"uri": str(_junk("s.npz")(d))}}, "SourceUnreadable", "is not an .npz"),
    ("samples for other inputs", _torchscript(CNN), "torchscript", CNN_SIGNATURE,
     lambda d: {"samples": {"uri": _npz(d, pixels=np.zeros((4, 3, 32, 32), np.float32))}}, "ValidationFailed",
     "no array for inputs ['image']"),
    ("samples of the wrong shape", _torchscript(CNN), "torchscript", CNN_SIGNATURE,
     lambda d: {"samples": {"uri": _npz(d, image=np.zeros((4, 3, 16), np.float32))}}, "ValidationInconclusive",
     "the source model fails on inputs of shapes"),
    ("NaN outputs", _torchscript(NaNModel), "torchscript", CNN_SIGNATURE, lambda d: {}, "ValidationFailed",
     "NaN/Inf"),
    ("constant outputs", _torchscript(Constant), "torchscript", CNN_SIGNATURE, lambda d: {},
     "ValidationInconclusive", "hardly varies"),
    ("one-class classifier", _torchscript(CNN), "torchscript", CNN_SIGNATURE,
     lambda d: {"tolerance": {"classifierOutputs": ["logits"]},
                "samples": {"uri": _npz(d, image=np.zeros((8, 3, 32, 32), np.float32))}},
     "ValidationInconclusive", "every sample of logits in class"),
    ("strict tolerance", _torchscript(CNN), "torchscript", CNN_SIGNATURE,
     lambda d: {"precision": "fp16", "tolerance": {"atol": 0, "rtol": 0}}, "ValidationFailed", "outside tolerance"),
]


@pytest.mark.parametrize(("case", "make", "fmt", "signature", "conversion", "reason", "words"), CASES,
                         ids=[c[0] for c in CASES])
def test_every_failure_has_a_reason(tmp_path: Path, case: str, make: Callable[[Path], Path], fmt: str,
                                    signature: Any, conversion: Callable[[Path], dict[str, Any]], reason: str,
                                    words: str) -> None:
    src = ModelSource.model_validate(source(str(make(tmp_path)), fmt, signature))
    request = Request("m", src, Conversion.model_validate(conversion(tmp_path)), CPU)
    with pytest.raises(ConversionError) as err:
        convert(request, tmp_path / "store")
    assert (err.value.reason, words in err.value.message) == (reason, True), err.value.message
    assert "Traceback" not in err.value.message and len(err.value.message) < 3000


def test_the_container_reports_the_reason_in_its_termination_message(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    doc = {"apiVersion": "modelyard.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
           "spec": {"model": {"uri": str(tmp_path / "m.onnx"), "format": "onnx"}, "serving": {"gpus": 0},
                    "conversion": {}}}
    term = tmp_path / "termination-log"
    assert run(None, tmp_path / "store", "native", term, manifest_json=json.dumps(doc)) == 1
    result = json.loads(term.read_text())
    assert (result["ok"], result["reason"]) == (False, "SourceUnreadable")
    assert "m.onnx is not an ONNX model" in result["message"]
