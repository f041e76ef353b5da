"""A user's own Keras layers, as a package in their converter image would hold them (conversion.kerasCustomObjects
names them): one plain subclass, one registered with Keras's serialization registry."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")  # the converter's backend; TensorFlow never loads in this process
import keras


class ScaledDense(keras.layers.Layer):  # type: ignore[misc]
    """x @ W times a constant from the layer's config: custom code a config-only loader cannot rebuild."""

    def __init__(self, units: int, scale: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units, self.scale = units, scale

    def build(self, shape: tuple[int, ...]) -> None:
        self.w = self.add_weight(shape=(shape[-1], self.units), initializer="glorot_uniform")

    def call(self, x: Any) -> Any:
        return keras.ops.matmul(x, self.w) * self.scale

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "scale": self.scale}


@keras.saving.register_keras_serializable(package="keras_layers")
class Swish(keras.layers.Layer):  # type: ignore[misc]
    """x * sigmoid(beta x), registered as keras_layers>Swish."""

    def __init__(self, beta: float = 1.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.beta = beta

    def call(self, x: Any) -> Any:
        return x * keras.ops.sigmoid(self.beta * x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta}


def custom_model(path: str) -> Any:
    """A small model with both layers, saved as `path` (.keras or .h5)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,), name="features"), ScaledDense(16, scale=0.5, name="scaled"),
                              Swish(name="swish"), keras.layers.Dense(3, name="scores")])
    model.save(path)
    return model
