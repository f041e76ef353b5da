"""Well-known architectures built from their own libraries (torchvision, transformers, timm) with random weights
and no downloads, small enough for the test suite, each with the signature a user would declare for it.

CNN BatchNorm statistics are made realistic (running means and variances from data, not the 0/1 of a fresh
module), and every model returns a tuple of tensors, as the exporters want.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[], torch.nn.Module]
    example: Callable[[], tuple[torch.Tensor, ...]]
    signature: dict[str, Any]
    kind: str
    """"cnn" or "transformer": what int8 mode suits it."""
    state_dict_class: str
    """conversion.modelClass that rebuilds it from a state_dict (with state_dict_args)."""
    state_dict_args: dict[str, Any]


def realistic_batchnorm(model: torch.nn.Module, shape: tuple[int, ...], batches: int = 4) -> torch.nn.Module:
    """Running statistics from data, as training leaves them, instead of a fresh module's zeros and ones."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a cumulative average over the batches below
            m.reset_running_stats()
            if m.affine:
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                torch.nn.init.normal_(m.bias, 0.0, 0.1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(16, *shape))
    return model.eval()


class Tupled(torch.nn.Module):
    """A transformers model called with keyword inputs, its outputs as a plain tuple."""

    def __init__(self, model: torch.nn.Module, inputs: tuple[str, ...], **call: Any) -> None:
        super().__init__()
        self.model, self.inputs, self.call = model, inputs, call

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.inputs, args, strict=True)), return_dict=False, **self.call)
        return tuple(out)


class TextModel(Tupled):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        return super().forward(input_ids, attention_mask)


class ImageModel(Tupled):
    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        return super().forward(pixel_values)


def bert(config: dict[str, Any]) -> torch.nn.Module:
    """A factory for conversion.modelClass: BERT from a config dict."""
    import transformers

    return TextModel(transformers.BertModel(transformers.BertConfig(**config)), ("input_ids", "attention_mask"))


def gpt2(config: dict[str, Any]) -> torch.nn.Module:
    import transformers

    return TextModel(transformers.GPT2Model(transformers.GPT2Config(**config)), ("input_ids", "attention_mask"),
                     use_cache=False)


def vit(config: dict[str, Any]) -> torch.nn.Module:
    import transformers

    return ImageModel(transformers.ViTModel(transformers.ViTConfig(**config)), ("pixel_values",))


def resnet18(num_classes: int = 10) -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


def timm_model(name: str, **kwargs: Any) -> torch.nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, **kwargs)


BERT = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64}
GPT2 = {"vocab_size": 100, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}
VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
       "image_size": 32, "patch_size": 8}
MOBILENET = {"name": "mobilenetv3_small_050", "num_classes": 10}
IMAGE = {"inputs": [{"name": "image", "dataType": "FP32", "shape": [3, 32, 32]}],
         "outputs": [{"name": "logits", "dataType": "FP32", "shape": [10]}]}
TEXT_IN = [{"name": "input_ids", "dataType": "INT64", "shape": [-1]},
           {"name": "attention_mask", "dataType": "INT64", "shape": [-1]}]


def _text() -> tuple[torch.Tensor, ...]:
    return torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.long)


def _image() -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, 3, 32, 32),)


def _seeded_cnn(build: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return realistic_batchnorm(build(), (3, 32, 32))
    return make


def _seeded(build: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return build().eval()
    return make


ARCHITECTURES = {a.name: a for a in [
    Architecture("torchvision-resnet18", _seeded_cnn(resnet18), _image, IMAGE, "cnn",
                 "architectures:resnet18", {"num_classes": 10}),
    Architecture("timm-mobilenetv3", _seeded_cnn(lambda: timm_model(**MOBILENET)), _image, IMAGE, "cnn",
                 "architectures:timm_model", MOBILENET),
    Architecture("transformers-bert", _seeded(lambda: bert(BERT)), _text, {
        "inputs": TEXT_IN, "outputs": [{"name": "last_hidden_state", "dataType": "FP32", "shape": [-1, 32]},
                                       {"name": "pooler_output", "dataType": "FP32", "shape": [32]}]},
                 "transformer", "architectures:bert", {"config": BERT}),
    Architecture("transformers-gpt2", _seeded(lambda: gpt2(GPT2)), _text, {
        "inputs": TEXT_IN, "outputs": [{"name": "last_hidden_state", "dataType": "FP32", "shape": [-1, 32]}]},
                 "transformer", "architectures:gpt2", {"config": GPT2}),
    Architecture("transformers-vit", _seeded(lambda: vit(VIT)), _image, {
        "inputs": [{"name": "pixel_values", "dataType": "FP32", "shape": [3, 32, 32]}],
        "outputs": [{"name": "last_hidden_state", "dataType": "FP32", "shape": [17, 32]},
                    {"name": "pooler_output", "dataType": "FP32", "shape": [32]}]},
                 "transformer", "architectures:vit", {"config": VIT}),
]}


def dynamic_shapes(arch: Architecture) -> tuple[dict[int, Any], ...]:
    """torch.export's dynamic dimensions: the batch, and the sequence of text inputs."""
    batch = torch.export.Dim("batch", min=1, max=64)
    if len(arch.signature["inputs"]) == 2:
        seq = torch.export.Dim("seq", min=2, max=63)
        return ({0: batch, 1: seq}, {0: batch, 1: seq})
    return ({0: batch},)
