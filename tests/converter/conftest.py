"""The administrator's converter settings for the converter tests (docs/security.md): the tests' own model code
stands for the plugin packages of a converter image, and the HTTP-source tests serve models from loopback."""

from __future__ import annotations

import pytest

ALLOWED_MODULES = "modelyard_plugins,convert_models,keras_layers,architectures"
LOOPBACK = "127.0.0.0/8"


@pytest.fixture(autouse=True)
def converter_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_CONVERTER_ALLOWED_MODULES", ALLOWED_MODULES)
    monkeypatch.setenv("MODELYARD_CONVERTER_ALLOWED_CIDRS", LOOPBACK)
