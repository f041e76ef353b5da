"""Staged LLM weights are verified every time they are about to be used: when a repository is reused, and in the
Triton pod before Triton starts (modelyard.convert.weights, the init container), from a directory or fetched from a
real S3-compatible server (moto's server mode)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import boto3
import pytest

from helpers import MOTO_SECRET, moto_s3
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.pipeline import Request, convert
from modelyard.convert.weights import WeightsUnverified, check, main
from samplemodels import tiny_llama

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
SERVED = "/models/converted"


def request(path: Path) -> Request:
    source = ModelSource.model_validate({"uri": str(path), "format": "huggingface"})
    conversion = Conversion.model_validate({"samples": {"prompts": ["The quick brown fox", "Once upon a time"]}})
    return Request("tiny-llama", source, conversion, Serving.model_validate({"runtime": "vllm", "vllm": {}}))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tiny_llama(str(tmp_path_factory.mktemp("ckpt") / "tiny-llama")))


@pytest.fixture()
def staged(checkpoint: Path, tmp_path: Path) -> tuple[Path, dict]:
    store = tmp_path / "store"
    return store, convert(request(checkpoint), store, served_store=SERVED)


def _check(store: Path, manifest: dict) -> dict:
    return check(str(store), manifest["key"], "tiny-llama", SERVED, None)


def _rewrite_manifest(directory: Path, name: str) -> None:
    """Make the manifest beside `name` agree with the file as it now is (what a forger with write access does)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_the_pod_check_passes_what_was_staged(staged: tuple[Path, dict]) -> None:
    store, manifest = staged
    result = _check(store, manifest)
    assert result == {"ok": True, "repository": manifest["key"], "weights": manifest["weights"]["key"],
                      "files": len(list((store / manifest["weights"]["key"]).iterdir())) - 1}


def test_tampered_weights_are_refused_in_the_pod(staged: tuple[Path, dict]) -> None:
    store, manifest = staged
    weights = store / manifest["weights"]["key"]
    planted = weights / "model.safetensors"
    planted.write_bytes(planted.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(WeightsUnverified, match=r"are not what was staged and gated: model\.safetensors has sha256"):
        _check(store, manifest)
    # A manifest rewritten to agree with the planted file does not name the staged content any more.
    _rewrite_manifest(weights, "model.safetensors")
    with pytest.raises(WeightsUnverified, match="do not hash to"):
        _check(store, manifest)


def test_an_extra_file_or_a_link_beside_the_weights_is_refused(staged: tuple[Path, dict], tmp_path: Path) -> None:
    store, manifest = staged
    weights = store / manifest["weights"]["key"]
    (weights / "extra.py").write_text("import os\n")
    with pytest.raises(WeightsUnverified, match=r"extra\.py is not in its manifest"):
        _check(store, manifest)
    (weights / "extra.py").unlink()
    (weights / "tokenizer.json").unlink()
    (weights / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(WeightsUnverified, match=r"tokenizer\.json has sha256"):
        _check(store, manifest)


def test_a_repository_naming_other_weights_is_refused(staged: tuple[Path, dict]) -> None:
    store, manifest = staged
    version = store / manifest["key"] / "tiny-llama" / "1"
    for model, words in (("/etc/passwd", "not a staged copy"), (f"{SERVED}/weights/../../etc", "not a staged copy")):
        args = json.loads((version / "model.json").read_text())
        (version / "model.json").write_text(json.dumps({**args, "model": model, "tokenizer": model}))
        _rewrite_manifest(store / manifest["key"], "tiny-llama/1/model.json")
        with pytest.raises(WeightsUnverified, match=words):
            _check(store, manifest)
    args = json.loads((version / "model.json").read_text())
    (version / "model.json").write_text(json.dumps({**args, "model": manifest["weights"]["path"],
                                                    "tokenizer": manifest["weights"]["path"],
                                                    "trust_remote_code": True}))
    with pytest.raises(WeightsUnverified, match="does not match its manifest"):  # not rewritten: the repository
        _check(store, manifest)
    _rewrite_manifest(store / manifest["key"], "tiny-llama/1/model.json")
    with pytest.raises(WeightsUnverified, match="trust_remote_code false"):
        _check(store, manifest)


def test_a_reused_repository_whose_weights_were_tampered_with_is_staged_again(checkpoint: Path,
                                                                              staged: tuple[Path, dict]) -> None:
    store, first = staged
    planted = store / first["weights"]["key"] / "model.safetensors"
    planted.write_bytes(planted.read_bytes()[:-4] + b"\0\0\0\0")
    again = convert(request(checkpoint), store, served_store=SERVED)
    assert again["reused"] is False and again["key"] == first["key"]
    assert "did not match their digest" in again["replaced"] and "model.safetensors has sha256" in again["replaced"]
    assert planted.read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    assert _check(store, again)["ok"] is True


def test_from_an_s3_store_the_pod_fetches_then_verifies(checkpoint: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with moto_s3(tmp_path) as endpoint:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        store = "s3://models/llm"
        manifest = convert(request(checkpoint), store, served_store="/models")
        assert manifest["weights"]["path"] == f"/models/{manifest['weights']['key']}"
        into = tmp_path / "pod"
        args = ["--store", store, "--store-endpoint", endpoint, "--key", manifest["key"], "--name", "tiny-llama",
                "--served-root", "/models", "--to", str(into), "--termination-log", str(tmp_path / "term")]
        assert main(args) == 0
        assert json.loads((tmp_path / "term").read_text())["ok"] is True
        fetched = into / manifest["weights"]["key"]
        assert (fetched / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
        assert (into / manifest["key"] / "tiny-llama" / "config.pbtxt").is_file()

        # A weights object replaced in the bucket: fetched, refused, and the reason in the termination message.
        key = f"llm/{manifest['weights']['key']}/model.safetensors"
        s3.put_object(Bucket="models", Key=key, Body=b"not the weights")
        shutil.rmtree(into)
        assert main(args) == 1
        result = json.loads((tmp_path / "term").read_text())
        assert result["ok"] is False and result["reason"] == "WeightsUnverified"
        assert "model.safetensors has sha256" in result["message"]
        # An object whose name leaves the key is never written outside the pod's directory.
        s3.put_object(Bucket="models", Key=key, Body=(checkpoint / "model.safetensors").read_bytes())
        s3.put_object(Bucket="models", Key=f"llm/{manifest['key']}/../../escape", Body=b"x")
        shutil.rmtree(into)
        assert main(args) == 1
        assert "not a file name under it" in json.loads((tmp_path / "term").read_text())["message"]
        assert not (tmp_path / "escape").exists() and not (into.parent / "escape").exists()
    out = capsys.readouterr()
    assert MOTO_SECRET not in out.out + out.err
