"""Renderers against golden files. `make golden` (UPDATE_GOLDEN=1) rewrites them; review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from modelyard import yamlio
from modelyard.cli import main as cli_main
from modelyard.cli import render_manifest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("**/*.yaml") if "ModelDeployment" in p.read_text())


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run `make golden` and review it"
    assert text == path.read_text(), f"{name} differs from its golden file: run `make golden` if that is intended"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_rendered_children_match_golden(example: Path) -> None:
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d and d["kind"] == "ModelDeployment"]
    rendered = [child for doc in docs for child in render_manifest(doc)]
    _check(f"{example.stem}.yaml", yamlio.dump_all(rendered))


def test_pvc_source_mounts_the_claim_read_only() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "resnet-gpu.yaml").read_text())
    doc["spec"]["model"]["uri"] = "pvc://model-store/resnet50/"
    deployment, _ = render_manifest(doc)
    _check("resnet-gpu-pvc.deployment.yaml", yamlio.dump(deployment))


def test_s3_store_is_read_by_triton_natively_and_written_with_prefixed_credentials() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "conversion" / "resnet-int8.yaml").read_text())
    doc["spec"]["conversion"].update({"store": "s3://models/converted", "storeEndpoint": "http://minio.storage:9000",
                                      "storeCredentialsSecretRef": {"name": "store-credentials"}})
    job, deployment, _ = render_manifest(doc)
    _check("resnet-int8-s3.yaml", yamlio.dump_all([job, deployment]))
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "store-credentials"}, "prefix": "STORE_"}]
    assert all(v["name"] != "store" for v in job["spec"]["template"]["spec"]["volumes"])
    triton = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--model-repository=s3://http://minio.storage:9000/models/converted/<key>" in triton["args"]
    assert triton["envFrom"] == [{"secretRef": {"name": "store-credentials"}}]


def test_cli_render_prints_the_children(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["render", "-f", str(ROOT / "examples" / "resnet-gpu.yaml")]) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == ["Deployment", "Service"]


def test_cli_render_reports_an_invalid_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: modelyard.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\n"
        "spec: {model: {uri: 's3://b/m', format: onnx}, serving: {gpu: 1}}\n"
    )
    assert cli_main(["render", "-f", str(bad)]) == 1
    assert "gpu" in capsys.readouterr().err
