"""Reading sources over HTTP and from a real S3-compatible server process (moto's server mode), not a mock."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from convert_models import CNN, CNN_SIGNATURE, save_external, save_torchscript, source
from helpers import MOTO_SECRET, moto_s3, serving_directory
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import SourceUnavailable
from modelyard.convert.pipeline import Request, convert
from modelyard.convert.sources import digest

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")
SECRET = MOTO_SECRET


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("src")
    save_torchscript(CNN, d / "cnn.pt")
    return d


@pytest.fixture(scope="module")
def s3(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        client = boto3.client("s3")
        client.create_bucket(Bucket="models")
        client.upload_file(str(model_dir / "cnn.pt"), "models", "cnn/cnn.pt")
        # An empty SavedModel message (it parses, and holds no op for the converter's op check) and a stand-in for
        # its variables: passed through, never loaded.
        client.put_object(Bucket="models", Key="tf/savedmodel/saved_model.pb", Body=b"")
        client.put_object(Bucket="models", Key="tf/savedmodel/variables/variables.index", Body=b"not really tensorflow")
        yield endpoint


def req(src: dict[str, object]) -> Request:
    return Request("cnn", ModelSource.model_validate(src), Conversion(), Serving(gpus=0))


def test_s3_source_converts_and_keeps_credentials_out(s3: str, model_dir: Path, tmp_path: Path) -> None:
    manifest = convert(req(source("s3://models/cnn/cnn.pt", "torchscript", CNN_SIGNATURE)), tmp_path / "store")
    assert manifest["source"]["digest"] == f"sha256:{digest(model_dir / 'cnn.pt')}"
    assert manifest["validation"]["passed"]
    written = json.dumps(manifest) + (Path(manifest["repository"]) / "manifest.json").read_text()
    assert SECRET not in written and "modelyard" not in json.dumps(manifest["source"])


def test_s3_prefix_savedmodel_is_passed_through(s3: str, tmp_path: Path) -> None:
    src = {"uri": "s3://models/tf/savedmodel", "format": "tensorflow-savedmodel"}
    conversion = Conversion.model_validate({"target": "tensorflow-savedmodel"})
    manifest = convert(Request("tf", ModelSource.model_validate(src), conversion, Serving(gpus=0)), tmp_path / "store")
    repo = Path(manifest["repository"])
    assert (repo / "tf" / "1" / "model.savedmodel" / "variables" / "variables.index").is_file()
    assert 'platform: "tensorflow_savedmodel"' in (repo / "tf" / "config.pbtxt").read_text()
    # The manifest says what was done: nothing was converted.
    assert (manifest["target"], manifest["precision"], manifest["opset"], manifest["passedThrough"]) == (
        "tensorflow-savedmodel", "unchanged", None, True)


def test_s3_onnx_with_external_data_fetches_the_data_beside_the_graph(s3: str, tmp_path: Path) -> None:
    graph = save_external(tmp_path / "ext")
    client = boto3.client("s3")
    for f in (graph, graph.parent / "cnn.onnx.data"):
        client.upload_file(str(f), "models", f"ext/{f.name}")
    manifest = convert(Request("cnn", ModelSource.model_validate(source("s3://models/ext/cnn.onnx", "onnx", None)),
                               Conversion(), Serving(gpus=0)), tmp_path / "store")
    assert manifest["validation"]["passed"]
    assert manifest["source"]["digest"] == f"sha256:{digest(graph, [graph.parent / 'cnn.onnx.data'])}"


def test_missing_s3_object_is_source_unavailable(s3: str, tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="s3://models/nope"):
        convert(req(source("s3://models/nope.pt", "torchscript", CNN_SIGNATURE)), tmp_path / "store")


def test_http_source(model_dir: Path, tmp_path: Path) -> None:
    with serving_directory(model_dir) as base:
        url = f"{base}/cnn.pt"
        manifest = convert(req(source(url, "torchscript", CNN_SIGNATURE)), tmp_path / "store")
        assert manifest["validation"]["passed"]
        with pytest.raises(SourceUnavailable, match="cannot download"):
            convert(req(source(url.replace("cnn.pt", "gone.pt"), "torchscript", CNN_SIGNATURE)), tmp_path / "s2")


def test_s3_store_publishes_and_reuses(
    s3: str, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boto3.client("s3").create_bucket(Bucket="store")
    # The store's own credentials arrive prefixed (the Job passes its Secret with prefix STORE_).
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(f"STORE_{name}", os.environ[name])
    request = req(source(str(model_dir / "cnn.pt"), "torchscript", CNN_SIGNATURE))
    first = convert(request, "s3://store/converted", store_endpoint=s3)
    key = first["key"]
    assert (first["reused"], first["repository"]) == (False, f"s3://store/converted/{key}")
    listed = boto3.client("s3").list_objects_v2(Bucket="store", Prefix=f"converted/{key}/")
    names = sorted(o["Key"].split(f"{key}/", 1)[1] for o in listed["Contents"])
    assert names == ["cnn/1/model.onnx", "cnn/config.pbtxt", "manifest.json"]
    again = convert(request, "s3://store/converted", store_endpoint=s3)
    assert (again["reused"], again["key"], again["artifact"]) == (True, key, first["artifact"])
