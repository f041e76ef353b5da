"""Which code a spec may name: conversion.modelClass and kerasCustomObjects import code of the converter image.

Only modules the operator's administrator allows (chart value converter.allowedModules; default: the converter
image's plugin package, `modelyard_plugins`), and never the standard library or the converter's own dependencies,
whatever the allowlist says: `os:system`, `builtins:exec` or `torch.hub:load` would otherwise run whatever a
manifest author chose, with the converter's credentials in its environment. The operator checks a spec before it
creates a conversion Job (a condition with the reason, no Job), and the converter checks again before it imports.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

DEFAULT_ALLOWED_MODULES = ("modelyard_plugins",)

NEVER_IMPORTED = frozenset({
    "modelyard", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxscript", "keras", "tensorflow", "tf2onnx",
    "h5py", "boto3", "botocore", "s3transfer", "urllib3", "requests", "yaml", "pydantic", "pydantic_core", "google",
    "tritonclient", "transformers", "timm", "jax", "scipy", "setuptools", "pip", "pkg_resources", "_pytest",
    "pytest", "kopf", "kubernetes", "prometheus_client",
})
"""The converter's and the operator's own dependencies: never named by a spec, whatever the allowlist says."""


def module_refusal(field: str, name: str, allowed: Iterable[str]) -> str | None:
    """Why `module:Name` may not be imported for `field`, or None when it may."""
    module = name.split(":", 1)[0]
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in NEVER_IMPORTED or top.startswith("_") or "__" in name:
        return (f"{field} {name} names code of the standard library or of the converter itself, which a spec may "
                "never run: name your own class, from a package in the converter image that the operator's "
                "administrator allows (converter.allowedModules, docs/security.md)")
    allowed = tuple(allowed)
    if not any(module == a or module.startswith(a + ".") for a in allowed):
        return (f"{field} {name} is not in a module the operator's administrator allows (allowed: "
                f"{', '.join(allowed) or 'none'}): put the class in one of them, or ask for its package to be added "
                "to converter.allowedModules (docs/security.md)")
    return None


def named_code(model_class: str | None, keras_custom_objects: Iterable[str] | None) -> list[tuple[str, str]]:
    """(field, module:Name) of every piece of code a conversion names."""
    named = [("conversion.modelClass", model_class)] if model_class else []
    return named + [("conversion.kerasCustomObjects", n) for n in keras_custom_objects or []]
