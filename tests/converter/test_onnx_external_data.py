"""ONNX sources whose weights are in external data files beside the graph (as torch.onnx.export writes them): from a
file, a directory and HTTP (S3: test_sources.py), and the locations that are refused before anything is read."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from convert_models import relocate, save_external, source
from helpers import serving_directory
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import SourceRefused, SourceUnavailable
from modelyard.convert.onnxdata import external_locations
from modelyard.convert.pipeline import Request, convert

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")


def request(src: dict[str, Any], conversion: dict[str, Any] | None = None) -> Request:
    return Request("cnn", ModelSource.model_validate(src), Conversion.model_validate(conversion or {}),
                   Serving(gpus=0))


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_external(tmp_path_factory.mktemp("ext") / "model")


def test_the_fixture_really_keeps_its_weights_outside_the_graph(external: Path) -> None:
    assert external_locations(external) == ["cnn.onnx.data"]
    assert (external.parent / "cnn.onnx.data").stat().st_size > 10 * external.stat().st_size


@pytest.mark.parametrize("conversion", [{}, {"precision": "fp16"}, {"precision": "int8", "int8Mode": "dynamic"}])
def test_a_graph_with_external_data_converts_into_one_self_contained_model(
    external: Path, tmp_path: Path, conversion: dict[str, Any]
) -> None:
    manifest = convert(request(source(str(external), "onnx", None), conversion), tmp_path / "store")
    assert manifest["validation"]["passed"], manifest["validation"]
    version = Path(manifest["repository"]) / "cnn" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx"]
    assert external_locations(version / "model.onnx") == []
    assert manifest["artifact"]["bytes"] == (version / "model.onnx").stat().st_size


def test_a_directory_with_the_graph_and_its_data_is_a_source(external: Path, tmp_path: Path) -> None:
    manifest = convert(request(source(str(external.parent), "onnx", None)), tmp_path / "store")
    assert manifest["validation"]["passed"]


def test_the_data_files_are_part_of_the_source_digest(external: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(external.parent, copy)
    first = convert(request(source(str(copy / "cnn.onnx"), "onnx", None)), tmp_path / "store")
    data = bytearray((copy / "cnn.onnx.data").read_bytes())
    data[100] ^= 0x01  # a changed weight: a different source, a different artifact
    (copy / "cnn.onnx.data").write_bytes(bytes(data))
    second = convert(request(source(str(copy / "cnn.onnx"), "onnx", None)), tmp_path / "store")
    assert first["source"]["digest"] != second["source"]["digest"]
    assert (first["key"] != second["key"]) and not second["reused"]


def test_a_graph_without_its_data_file_is_reported(external: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(external, alone / "cnn.onnx")
    with pytest.raises(SourceUnavailable, match=r"keeps weights in 'cnn\.onnx\.data', which is not beside it"):
        convert(request(source(str(alone / "cnn.onnx"), "onnx", None)), tmp_path / "store")


def test_a_directory_needs_exactly_one_graph(external: Path, tmp_path: Path) -> None:
    two = tmp_path / "two"
    shutil.copytree(external.parent, two)
    shutil.copyfile(external, two / "other.onnx")
    with pytest.raises(SourceUnavailable, match=r"exactly one .onnx graph \(found: cnn.onnx, other.onnx\)"):
        convert(request(source(str(two), "onnx", None)), tmp_path / "store")


@pytest.mark.parametrize("location", ["../cnn.onnx.data", "/etc/passwd", "sub/../../cnn.onnx.data",
                                      "..\\cnn.onnx.data", "C:/weights.bin"])
def test_external_data_outside_the_models_directory_is_refused(
    external: Path, tmp_path: Path, location: str
) -> None:
    model = tmp_path / "inner" / "model"
    shutil.copytree(external.parent, model)
    shutil.copyfile(model / "cnn.onnx.data", tmp_path / "inner" / "cnn.onnx.data")  # what `..` would reach
    relocate(model / "cnn.onnx", location)
    with pytest.raises(SourceRefused, match=r"external data location .* is not a relative path inside the source"):
        convert(request(source(str(model / "cnn.onnx"), "onnx", None)), tmp_path / "store")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_a_data_file_that_is_a_symlink_out_of_the_directory_is_refused(external: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    shutil.copyfile(external, model / "cnn.onnx")
    shutil.copyfile(external.parent / "cnn.onnx.data", tmp_path / "elsewhere.data")
    (model / "cnn.onnx.data").symlink_to(tmp_path / "elsewhere.data")
    with pytest.raises(SourceRefused, match=r"external data location .cnn\.onnx\.data. resolves outside the source"):
        convert(request(source(str(model / "cnn.onnx"), "onnx", None)), tmp_path / "store")


def test_over_http_the_data_files_come_from_beside_the_graph(external: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    save_external(served / "models", location="weights/cnn.bin")
    with serving_directory(served) as base:
        url = f"{base}/models/cnn.onnx"
        manifest = convert(request(source(url, "onnx", None)), tmp_path / "store")
        assert manifest["validation"]["passed"]
        (served / "models" / "weights" / "cnn.bin").unlink()
        with pytest.raises(SourceUnavailable, match=r"cannot download .*/models/weights/cnn\.bin"):
            convert(request(source(url, "onnx", None)), tmp_path / "store2")
