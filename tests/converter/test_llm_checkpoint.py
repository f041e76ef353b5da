"""A huggingface checkpoint through the converter: staged once, each hostile checkpoint refused with its own reason
before anything is staged, the gate's numbers, and a cast that the gate measures (and one it refuses).

The checkpoint is a tiny Llama made here (hack/samplemodels.py: random weights, a tokenizer trained on a
paragraph); nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from hostile_checkpoints import HOSTILE, pickled, unknown_architecture
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ConversionError
from modelyard.convert.hfcheck import SERVED_ARCHITECTURES
from modelyard.convert.pipeline import Request, convert
from samplemodels import tiny_llama

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]

PROMPTS = ["The quick brown fox", "Once upon a time there was", "What is the capital of France?"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tiny_llama(str(tmp_path_factory.mktemp("ckpt") / "tiny-llama")))


def request(path: Path, vllm: dict[str, Any] | None = None, gpus: int = 1, **tolerance: Any) -> Request:
    source = ModelSource.model_validate({"uri": str(path), "format": "huggingface"})
    conversion = Conversion.model_validate({"samples": {"prompts": PROMPTS}, "tolerance": tolerance})
    serving = Serving.model_validate({"runtime": "vllm", "gpus": gpus, "vllm": vllm or {"dtype": "float32"}})
    return Request("tiny-llama", source, conversion, serving)


def copy_of(checkpoint: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "ckpt"
    shutil.copytree(checkpoint, dest)
    return dest


def refused(path: Path, store: Path) -> ConversionError:
    with pytest.raises(ConversionError) as caught:
        convert(request(path), store)
    assert not (store / "weights").exists(), "a refused checkpoint must not be staged"
    assert "\x1b" not in caught.value.message
    return caught.value


def test_a_checkpoint_is_staged_once_checked_gated_and_given_a_vllm_repository(checkpoint: Path,
                                                                               tmp_path: Path) -> None:
    store = tmp_path / "store"
    manifest = convert(request(checkpoint), store, served_store="/models/converted")
    assert manifest["reused"] is False and manifest["target"] == "vllm"
    llm = manifest["validation"]["llm"]
    assert llm["prompts"] == 3 and llm["repeatable"] is True and llm["generatedTokens"] > 0
    assert llm["servedDtype"] == "float32" == llm["checkpointDtype"] and "cast" not in llm
    weights = manifest["weights"]
    assert weights["reused"] is False and weights["key"].startswith("weights/")
    assert weights["path"] == f"/models/converted/{weights['key']}"
    staged = store / weights["key"]
    assert sorted(p.name for p in staged.iterdir()) == sorted([*(p.name for p in checkpoint.iterdir()),
                                                               "manifest.json"])
    repo = Path(manifest["repository"]) / "tiny-llama"
    config = (repo / "config.pbtxt").read_text()
    assert 'backend: "vllm"' in config and "decoupled: true" in config and "KIND_MODEL" in config
    assert "REPORT_CUSTOM_METRICS" in config
    args = json.loads((repo / "1" / "model.json").read_text())
    assert args["model"] == weights["path"] and args["trust_remote_code"] is False
    assert args["dtype"] == "float32" and args["tensor_parallel_size"] == 1 and args["load_format"] == "safetensors"

    # Other engine settings: a new repository, the same staged weights, not copied again.
    other = convert(request(checkpoint, {"dtype": "float32", "maxConcurrentSequences": 4}), store,
                    served_store="/models/converted")
    assert other["key"] != manifest["key"]
    assert other["weights"] == {**weights, "reused": True}
    assert json.loads((Path(other["repository"]) / "tiny-llama/1/model.json").read_text())["max_num_seqs"] == 4
    # The same request again: the whole repository reused.
    assert convert(request(checkpoint), store, served_store="/models/converted")["reused"] is True


def test_staged_weights_that_no_longer_verify_are_copied_again(checkpoint: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = convert(request(checkpoint), store)
    shutil.rmtree(first["repository"])  # the repository goes, the weights stay and are tampered with
    planted = store / first["weights"]["key"] / "model.safetensors"
    planted.write_bytes(planted.read_bytes()[:-4] + b"\0\0\0\0")
    again = convert(request(checkpoint), store)
    assert again["weights"]["reused"] is False and "did not match their manifest" in again["weights"]["replaced"]
    assert planted.read_bytes() == (checkpoint / "model.safetensors").read_bytes()


@pytest.mark.parametrize("spoil", HOSTILE, ids=[f.__name__.strip("_") for f in HOSTILE])
def test_a_hostile_checkpoint_is_refused_with_its_own_reason_before_anything_is_staged(
        checkpoint: Path, tmp_path: Path, spoil: Any) -> None:
    ckpt = copy_of(checkpoint, tmp_path)
    reason = spoil(ckpt)
    error = refused(ckpt, tmp_path / "store")
    assert error.reason == reason, error.message


def test_the_refusals_say_what_to_do(checkpoint: Path, tmp_path: Path) -> None:
    ckpt = copy_of(checkpoint, tmp_path)
    pickled(ckpt)
    assert "safe_serialization=True" in refused(ckpt, tmp_path / "s1").message
    ckpt = copy_of(checkpoint, tmp_path / "b")
    unknown_architecture(ckpt)
    message = refused(ckpt, tmp_path / "s2").message
    assert "MysteryForCausalLM" in message and "LlamaForCausalLM" in message


def test_a_tokenizer_that_does_not_give_a_prompt_back_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    ckpt = copy_of(checkpoint, tmp_path)
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    error = refused(ckpt, tmp_path / "store")
    assert error.reason == "TokenizerUnusable" and "does not give prompt 0 back" in error.message


def test_a_cast_is_measured_against_the_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    """dtype auto on a GPU serves a float32 checkpoint in float16, as vLLM does: the gate measures that cast. A
    random-weight model's next-token margins are tiny (its logits are nearly flat), so fp16 flips one position of
    25 here: refused at the default 0.98, served once the spec accepts 0.9."""
    with pytest.raises(ConversionError) as caught:
        convert(request(checkpoint, {"dtype": "auto"}), tmp_path / "strict")
    assert caught.value.reason == "ValidationFailed" and "next-token top-1 agreement" in caught.value.message
    manifest = convert(request(checkpoint, {"dtype": "auto"}, minTop1Agreement=0.9), tmp_path / "store")
    cast = manifest["validation"]["llm"]["cast"]
    assert manifest["precision"] == "float16" and cast["from"] == "float32" and cast["to"] == "float16"
    assert cast["positions"] == 25 and cast["top1Agreement"] >= 0.9 and 0.95 < cast["perplexityRatio"] < 1.05


def test_a_cast_that_overflows_is_refused_with_its_numbers(checkpoint: Path, tmp_path: Path) -> None:
    """Activations beyond float16's range: in float32 the model is fine, in float16 it is not."""
    import torch
    from safetensors.torch import load_file, save_file

    ckpt = copy_of(checkpoint, tmp_path)
    weights = load_file(str(ckpt / "model.safetensors"))
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * 4e7
    weights["model.norm.weight"] = torch.ones_like(weights["model.norm.weight"])
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError) as caught:
        convert(request(ckpt, {"dtype": "float16"}), tmp_path / "store")
    assert caught.value.reason == "ValidationFailed"
    assert "float16" in caught.value.message and "perplexity ratio" in caught.value.message


def test_served_architectures_are_causal_language_models() -> None:
    assert "LlamaForCausalLM" in SERVED_ARCHITECTURES
    assert all(a.endswith(("ForCausalLM", "LMHeadModel")) for a in SERVED_ARCHITECTURES)
