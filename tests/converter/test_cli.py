"""`modelyard convert -f md.yaml --out DIR`: the same conversion a user can run on a laptop, and the
termination message the converter container leaves for the operator."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from convert_models import CNN, CNN_SIGNATURE, NaNModel, save_torchscript
from modelyard.cli import main

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")


def manifest(tmp_path: Path, model: Path, conversion: dict[str, object]) -> Path:
    doc = {
        "apiVersion": "modelyard.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "cnn"},
        "spec": {"model": {"uri": str(model), "format": "torchscript", "signature": CNN_SIGNATURE},
                 "serving": {"gpus": 0, "maxBatchSize": 8}, "conversion": conversion},
    }
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_convert_command_writes_repository_and_termination_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_torchscript(CNN, tmp_path / "cnn.pt")
    md = manifest(tmp_path, tmp_path / "cnn.pt", {"precision": "fp16"})
    term = tmp_path / "termination-log"
    assert main(["convert", "-f", str(md), "--out", str(tmp_path / "store"), "--termination-log", str(term)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["precision"] == "fp16" and printed["validation"]["passed"]
    result = json.loads(term.read_text())
    assert result["ok"] and result["key"] == printed["key"] and result["validation"]["samples"] == 128
    assert len(term.read_text()) < 4096
    assert (tmp_path / "store" / printed["key"] / "cnn" / "config.pbtxt").is_file()


def test_convert_command_reports_a_failed_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_torchscript(NaNModel, tmp_path / "nan.pt")
    md = manifest(tmp_path, tmp_path / "nan.pt", {})
    term = tmp_path / "termination-log"
    assert main(["convert", "-f", str(md), "--out", str(tmp_path / "store"), "--termination-log", str(term)]) == 1
    result = json.loads(term.read_text())
    assert result == {"ok": False, "reason": "ValidationFailed", "message": result["message"]}
    assert "NaN/Inf" in result["message"]
    assert "ValidationFailed" in capsys.readouterr().err


def test_an_unforeseen_failure_still_ends_with_a_reason_and_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that is a file, not a directory, fails inside the publishing with an OSError no reason maps: the
    termination message still says ConversionFailed, with the error, for the operator's conditions."""
    save_torchscript(CNN, tmp_path / "cnn.pt")
    md = manifest(tmp_path, tmp_path / "cnn.pt", {})
    (tmp_path / "store").write_text("a file where the store should be")
    term = tmp_path / "termination-log"
    assert main(["convert", "-f", str(md), "--out", str(tmp_path / "store"), "--termination-log", str(term)]) == 1
    result = json.loads(term.read_text())
    assert (result["ok"], result["reason"]) == (False, "ConversionFailed")
    assert result["message"].startswith("the converter failed unexpectedly: ")
    assert "Traceback" not in result["message"]
    assert "ConversionFailed" in capsys.readouterr().err
