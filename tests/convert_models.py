"""Small models the converter tests make themselves (no model hub): a CNN, a transformer encoder, broken ones."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch

from samplemodels import CNN as CNN  # re-exported: the tests import their models from here

CNN_SIGNATURE = {
    "inputs": [{"name": "image", "dataType": "FP32", "shape": [3, 32, 32]}],
    "outputs": [{"name": "logits", "dataType": "FP32", "shape": [10]}],
}
ENCODER_SIGNATURE = {
    "inputs": [{"name": "ids", "dataType": "INT64", "shape": [-1]}],
    "outputs": [{"name": "pooled", "dataType": "FP32", "shape": [16]}],
}


class ReferenceCNN(torch.nn.Module):
    """The benchmark's CNN: a small VGG-style classifier (about 0.3 M parameters) on 3x32x32 images."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = [3, 32, 64, 128]
        for c_in, c_out in itertools.pairwise(channels):
            layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.ReLU(),
                       torch.nn.Conv2d(c_out, c_out, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class Encoder(torch.nn.Module):
    """A small transformer encoder over token ids, mean-pooled to a 16-d embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(100, 32)
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = torch.nn.Linear(32, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.enc(self.emb(ids)).mean(dim=1))


class NaNModel(CNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


class WrongShape(CNN):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(32, 12)  # the signature says 10


def _seeded(cls: type[torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def save_torchscript(cls: type[torch.nn.Module], path: Path) -> torch.nn.Module:
    model = _seeded(cls)
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 3, 32, 32)), str(path))
    return model


def save_exported_encoder(path: Path) -> torch.nn.Module:
    model = _seeded(Encoder)
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=512)
    program = torch.export.export(model, (torch.randint(0, 100, (2, 8)),), dynamic_shapes=({0: batch, 1: seq},))
    torch.export.save(program, str(path))
    return model


def save_cnn_onnx(path: Path) -> torch.nn.Module:
    model = _seeded(CNN)
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return model


def save_external(directory: Path, location: str = "cnn.onnx.data") -> Path:
    """cnn.onnx with every weight in `location` (relative to `directory`)."""
    directory.mkdir(parents=True, exist_ok=True)
    inline = directory / "inline.onnx"
    save_cnn_onnx(inline)
    import onnx

    model = onnx.load(str(inline))
    inline.unlink()
    graph = directory / "cnn.onnx"
    (directory / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)
    return graph


def relocate(graph: Path, location: str) -> None:
    """Rewrite the graph so that its tensors name `location` (the data file is left where it was)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    graph.write_bytes(model.SerializeToString())


def source(uri: str, fmt: str, signature: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"uri": uri, "format": fmt}
    if signature:
        out["signature"] = signature
    return out


class TemplateTask:
    """A classification task with real margins and real ambiguity, made here: each class is a smooth random
    image, each sample one class's image under Gaussian noise. A model trained on it has the BatchNorm statistics,
    logit spread and decision margins of a trained model, and its samples are the "user's data" of a test."""

    def __init__(self, shape: tuple[int, ...] = (3, 32, 32), noise: float = 6.0, classes: int = 10,
                 seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        small = torch.randn(classes, shape[0], 4, 4, generator=g)
        self.templates = torch.nn.functional.interpolate(small, size=shape[1:], mode="bilinear")
        self.shape, self.noise, self.classes = shape, noise, classes

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, self.classes, (n,), generator=g)
        return self.templates[labels] + self.noise * torch.randn(n, *self.shape, generator=g), labels

    def save(self, path: Path, n: int, seed: int, name: str = "image") -> Path:
        import numpy as np

        np.savez(path, **{name: self.sample(n, seed)[0].numpy()})
        return path


def trained(model: torch.nn.Module, task: TemplateTask, steps: int = 60, lr: float = 1e-3) -> torch.nn.Module:
    """`model` after `steps` of Adam on the task (seeded: the same weights each run)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        x, y = task.sample(64, 1000 + step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def save_traced(model: torch.nn.Module, path: Path, example: torch.Tensor) -> torch.nn.Module:
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, example), str(path))
    return model


def keras_cnn(path: Path) -> Any:
    """The seeds' kind of Keras model: a binary image classifier (Rescaling, Conv2D/MaxPooling, Dense, sigmoid) on
    64x64 RGB images, saved as `path` (.keras or .h5)."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64, 64, 3), name="image"),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid", name="probability"),
    ])
    model.save(str(path))
    return model


def keras_images(path: Path, n: int = 64, seed: int = 5) -> Path:
    """Images as the Keras model expects them (0..255, channels last): the user's samples."""
    import numpy as np

    np.savez(path, image=np.random.default_rng(seed).uniform(0, 255, (n, 64, 64, 3)).astype(np.float32))
    return path


class ConfiguredCNN(torch.nn.Module):
    """A model whose shape comes from its config, as most shipped ones do: conversion.modelClassArgs builds it."""

    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def configured_cnn(config: dict[str, Any]) -> ConfiguredCNN:
    """A factory, as conversion.modelClass may name: a config object (here a dict) in, the module out."""
    return ConfiguredCNN(width=int(config["hidden"]), classes=int(config.get("labels", 10)))


TF_CNN = """
import sys
import tensorflow as tf

tf.random.set_seed(0)


class CNN(tf.Module):
    def __init__(self):
        super().__init__()
        self.w1 = tf.Variable(tf.random.normal([3, 3, 3, 16], stddev=0.3))
        self.w2 = tf.Variable(tf.random.normal([3, 3, 16, 32], stddev=0.2))
        self.dense = tf.Variable(tf.random.normal([32, 1], stddev=0.3))

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="image")])
    def __call__(self, image):
        x = tf.nn.relu(tf.nn.conv2d(image, self.w1, 1, "SAME"))
        x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        x = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, self.w2, 1, "SAME")), axis=[1, 2])
        return {"probability": tf.sigmoid(x @ self.dense)}


model = CNN()
tf.saved_model.save(model, sys.argv[1], signatures={"serving_default": model.__call__})
"""


def save_tf_cnn(path: Path) -> Path:
    """A SavedModel of a small binary image classifier written with TensorFlow itself (channels last), with the
    serving_default signature Triton and tf2onnx read: image (N, 32, 32, 3) -> probability (N, 1). Made in a
    process of its own: TensorFlow and torch abort in one process (two LLVMs)."""
    import subprocess
    import sys

    from modelyard.convert.models import tf_environment

    subprocess.run([sys.executable, "-c", TF_CNN, str(path)], check=True, env=tf_environment(), timeout=600)
    return path
