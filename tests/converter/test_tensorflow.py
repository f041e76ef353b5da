"""TensorFlow SavedModels: converted to ONNX by tf2onnx and validated against TensorFlow, or served as they are."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from convert_models import save_tf_cnn
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ConversionUnsupported
from modelyard.convert.pipeline import Request, convert

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")
CPU = Serving.model_validate({"gpus": 0, "maxBatchSize": 8})


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tf_cnn(tmp_path_factory.mktemp("tf") / "cnn")


def request(uri: str, conversion: dict[str, Any] | None = None, fmt: str = "tensorflow-savedmodel") -> Request:
    return Request("tf", ModelSource.model_validate({"uri": uri, "format": fmt}),
                   Conversion.model_validate(conversion or {}), CPU)


@pytest.mark.parametrize("conversion", [{}, {"precision": "fp16"}, {"precision": "int8", "int8Mode": "dynamic"}],
                         ids=["fp32", "fp16", "int8-dynamic"])
def test_a_savedmodel_converts_to_onnx_and_matches_tensorflow(saved_model: Path, tmp_path: Path,
                                                              conversion: dict[str, Any]) -> None:
    manifest = convert(request(str(saved_model), conversion), tmp_path / "store")
    v = manifest["validation"]
    assert v["passed"] and manifest["target"] == "onnx" and "passedThrough" not in manifest
    assert v["outputs"][0]["name"] == "probability" and v["outputs"][0]["spread"] > 1e-3
    cfg = text_format.Parse((Path(manifest["repository"]) / "tf" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert cfg.platform == "onnxruntime_onnx"
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("image", [32, 32, 3])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("probability", [1])]


def test_target_tensorflow_savedmodel_serves_it_as_it_is(saved_model: Path, tmp_path: Path) -> None:
    manifest = convert(request(str(saved_model), {"target": "tensorflow-savedmodel"}), tmp_path / "store")
    repo = Path(manifest["repository"])
    assert (repo / "tf" / "1" / "model.savedmodel" / "saved_model.pb").is_file()
    assert 'platform: "tensorflow_savedmodel"' in (repo / "tf" / "config.pbtxt").read_text()
    assert (manifest["target"], manifest["precision"], manifest["passedThrough"]) == (
        "tensorflow-savedmodel", "unchanged", True)


@pytest.mark.parametrize(("uri", "fmt", "conversion", "words"), [
    ("/nowhere/sm", "tensorflow-savedmodel", {"target": "tensorflow-savedmodel", "precision": "int8"},
     "precision int8 cannot be honoured"),
    ("/nowhere/sm", "tensorflow-savedmodel", {"target": "torchscript"}, "converts to ONNX (tf2onnx), not torchscript"),
    ("/nowhere/cnn.pt", "torchscript", {"target": "tensorflow-savedmodel"}, "a torchscript source is not one"),
])
def test_impossible_savedmodel_requests_are_refused_before_any_work(tmp_path: Path, uri: str, fmt: str,
                                                                    conversion: dict[str, Any], words: str) -> None:
    with pytest.raises(ConversionUnsupported, match=words.replace("(", r"\(").replace(")", r"\)")):
        convert(request(uri, conversion, fmt), tmp_path / "store")
