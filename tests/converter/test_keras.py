"""Keras sources (.keras, .h5) converted to ONNX on Keras's torch backend, validated against Keras itself."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from convert_models import keras_cnn, keras_images, source
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ConversionUnsupported, SourceRefused, SourceUnreadable
from modelyard.convert.pipeline import Request, convert

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")
os.environ.setdefault("KERAS_BACKEND", "torch")  # as the converter runs Keras, whichever test imports it first
CPU = Serving.model_validate({"gpus": 0, "maxBatchSize": 8})
SIGNATURE = {"inputs": [{"name": "image", "dataType": "FP32", "shape": [64, 64, 3]}],
             "outputs": [{"name": "probability", "dataType": "FP32", "shape": [1]}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keras")
    keras_cnn(d / "cnn.keras")
    keras_cnn(d / "cnn.h5")
    keras_images(d / "images.npz")
    return d


def request(uri: str, conversion: dict[str, Any] | None = None, fmt: str = "keras",
            signature: dict[str, Any] | None = None) -> Request:
    return Request("keras", ModelSource.model_validate(source(uri, fmt, signature)),
                   Conversion.model_validate(conversion or {}), CPU)


@pytest.mark.parametrize("name", ["cnn.keras", "cnn.h5"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8-dynamic"])
def test_keras_files_convert_to_onnx_and_pass_the_gate(files: Path, tmp_path: Path, name: str,
                                                       precision: str) -> None:
    conv: dict[str, Any] = {"precision": precision.split("-")[0], "samples": {"uri": str(files / "images.npz")}}
    if precision == "int8-dynamic":
        conv["int8Mode"] = "dynamic"
    manifest = convert(request(str(files / name), conv), tmp_path / "store")
    v = manifest["validation"]
    assert v["passed"] and manifest["target"] == "onnx" and manifest["precision"] == conv["precision"]
    assert v["samples"] == (48 if precision.startswith("int8") else 64)  # int8: the first quarter calibrates
    assert v["outputs"][0]["spread"] > 1e-4  # real images, not noise the Rescaling layer flattens
    repo = Path(manifest["repository"])
    cfg = text_format.Parse((repo / "keras" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert cfg.platform == "onnxruntime_onnx"
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("image", [64, 64, 3])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("output_0", [1])]  # Keras numbers its outputs


def test_the_signature_names_the_outputs(files: Path, tmp_path: Path) -> None:
    manifest = convert(request(str(files / "cnn.keras"), signature=SIGNATURE), tmp_path / "store")
    cfg = text_format.Parse((Path(manifest["repository"]) / "keras" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert [o.name for o in cfg.output] == ["probability"]


def test_a_lambda_layer_is_refused_not_run(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Lambda(lambda t: t * 2),
                              keras.layers.Dense(1)])
    for name in ("lambda.keras", "lambda.h5"):  # the Lambda's bytecode is in the file; safe mode never loads it
        model.save(str(tmp_path / name))
        with pytest.raises(SourceRefused, match=r"holds Python code .*Lambda"):
            convert(request(str(tmp_path / name)), tmp_path / "store")


@pytest.mark.parametrize(("uri", "conversion", "fmt", "error", "words"), [
    ("/nowhere/cnn.keras", {"target": "torchscript"}, "keras", ConversionUnsupported, "a Keras model converts to ONNX"),
    ("/nowhere/cnn.keras", {"pruning": {"sparsity": 0.3}}, "keras", ConversionUnsupported, "without pruning"),
    ("/nowhere/cnn.pt", {"kerasCustomObjects": ["keras_layers:Swish"]}, "torchscript", ConversionUnsupported,
     "kerasCustomObjects is for format keras"),
])
def test_impossible_keras_requests_are_refused_before_any_work(tmp_path: Path, uri: str, conversion: dict[str, Any],
                                                               fmt: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):  # the source does not exist: a late refusal would say so instead
        convert(request(uri, conversion, fmt), tmp_path / "store")


def test_a_keras_file_given_as_savedmodel_says_what_it_is(files: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceUnreadable, match=r"is not a SavedModel directory.*format keras"):
        convert(request(str(files / "cnn.keras"), fmt="tensorflow-savedmodel"), tmp_path / "store")


@pytest.mark.parametrize("name", ["broken.keras", "broken.h5", "model.onnx"])
def test_a_file_keras_cannot_read_is_unreadable(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SourceUnreadable, match=f"{name} is not a Keras"):
        convert(request(str(tmp_path / name)), tmp_path / "store")


CUSTOM = ["keras_layers:ScaledDense", "keras_layers:Swish"]


@pytest.mark.parametrize("name", ["custom.keras", "custom.h5"])
def test_custom_layers_load_from_the_converter_image_code_that_the_spec_names(tmp_path: Path, name: str) -> None:
    from keras_layers import custom_model

    custom_model(str(tmp_path / name))
    # Not named: refused before Keras reads the model (an .h5 file names a plain class without its module),
    # although this process could import both classes and Keras would find the registered one by its registered
    # name: only the spec decides what code runs.
    with pytest.raises(SourceRefused, match=r"uses classes from outside Keras: (keras_layers\.)?ScaledDense, "
                       r"keras_layers\.Swish\..*conversion\.kerasCustomObjects"):
        convert(request(str(tmp_path / name)), tmp_path / "store")
    with pytest.raises(SourceRefused, match=r"uses classes from outside Keras: keras_layers\.Swish\."):
        convert(request(str(tmp_path / name), {"kerasCustomObjects": CUSTOM[:1]}), tmp_path / "store")
    # Named: converted on Keras's torch backend and validated against the same layers run by Keras.
    manifest = convert(request(str(tmp_path / name), {"kerasCustomObjects": CUSTOM}), tmp_path / "store")
    v = manifest["validation"]
    assert v["passed"] and v["outputs"][0]["max_abs_error"] <= 1e-4 * v["outputs"][0]["spread"], v


def test_custom_objects_that_do_not_import_are_refused_with_where_the_code_must_be(tmp_path: Path) -> None:
    from keras_layers import custom_model

    custom_model(str(tmp_path / "custom.keras"))
    with pytest.raises(SourceRefused, match=r"kerasCustomObjects modelyard_plugins\.mylayers:ScaledDense cannot be "
                       "imported.*converter image"):
        named = ["modelyard_plugins.mylayers:ScaledDense", "keras_layers:Swish"]
        convert(request(str(tmp_path / "custom.keras"), {"kerasCustomObjects": named}), tmp_path / "store")


def _functional(path: Path, inputs: int) -> None:
    """A Keras functional model (keras.Model(inputs, outputs)) with one or two named inputs, saved as `path`."""
    import keras

    keras.utils.set_random_seed(1)
    a = keras.Input((8,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(a)
    if inputs == 1:
        keras.Model(a, keras.layers.Dense(3, name="scores")(hidden)).save(str(path))
        return
    b = keras.Input((4,), name="context")
    joined = keras.layers.Concatenate()([hidden, keras.layers.Dense(4, activation="tanh")(b)])
    keras.Model([a, b], keras.layers.Dense(3, name="scores")(joined)).save(str(path))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("inputs", [1, 2])
def test_functional_models_convert_and_are_validated_against_keras(tmp_path: Path, suffix: str,
                                                                   inputs: int) -> None:
    # Their configs name Keras's own serialization markers (__keras_tensor__, and in .h5 the Functional class),
    # which once were taken for classes from outside Keras and refused.
    path = tmp_path / f"functional{suffix}"
    _functional(path, inputs)
    manifest = convert(request(str(path)), tmp_path / "store")
    v = manifest["validation"]
    assert v["passed"] and v["samples"] == 128 and v["max_abs_error"] < 1e-5, v
    config = text_format.Parse((Path(manifest["repository"]) / "keras" / "config.pbtxt").read_text(),
                               mc.ModelConfig())
    assert [i.name for i in config.input] == ["features", "context"][:inputs]
