"""Shared by the conversion tests: the store PVC (a hostPath PV on a directory of the test's) and a manifest whose
converter pod runs on the process kubelet's node, as a real process with the Job's own args, env and volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from convert_models import CNN, CNN_SIGNATURE, NaNModel, save_torchscript
from helpers import bound_claim, model_deployment
from localcluster import LocalCluster
from processkubelet.kubelet import ON_PROCESS_NODE


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    found = next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == type_), None)
    assert found is not None, f"no {type_} condition in {body.get('status')}"
    return found


@pytest.fixture
def store(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Path:
    """PVC `model-store` (bound to a PV) and the directory that plays its contents."""
    bound_claim(cluster, namespace, "model-store", tmp_path, "ReadWriteMany")
    (tmp_path / "sources").mkdir()
    save_torchscript(CNN, tmp_path / "sources" / "cnn.pt")
    save_torchscript(NaNModel, tmp_path / "sources" / "nan.pt")
    return tmp_path


def converting(name: str, namespace: str, source: str, precision: str = "fp16") -> dict[str, Any]:
    """A model converted on the process node; Triton is placed on kwok's CPU node unless the caller moves it."""
    manifest = model_deployment(name, namespace, gpus=0, tolerations=[], maxBatchSize=8)
    manifest["spec"]["model"] = {"uri": f"pvc://model-store/sources/{source}", "format": "torchscript",
                                 "signature": CNN_SIGNATURE}
    manifest["spec"]["conversion"] = {"precision": precision, "store": "pvc://model-store/converted",
                                      **ON_PROCESS_NODE}
    return manifest
