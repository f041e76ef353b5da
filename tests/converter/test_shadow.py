"""The python-backend shadow of a native repository (what the local cluster's CPU Triton serves)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from convert_models import CNN, CNN_SIGNATURE, save_torchscript, source
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.pipeline import Request, convert
from modelyard.convert.shadow import ShadowUnsupported, python_shadow

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")

GPU = Serving.model_validate({"gpus": 1, "maxBatchSize": 8})


@pytest.mark.parametrize(("target", "artifact", "runner"), [("onnx", "model.onnx", "onnxruntime"),
                                                            ("torchscript", "model.pt", "torch.jit.load")])
def test_the_shadow_serves_the_same_artifact_with_the_python_backend_on_cpu(
    tmp_path: Path, target: str, artifact: str, runner: str
) -> None:
    save_torchscript(CNN, tmp_path / "cnn.pt")
    request = Request("cnn", ModelSource.model_validate(source(str(tmp_path / "cnn.pt"), "torchscript",
                                                                CNN_SIGNATURE)),
                      Conversion.model_validate({"target": target}), GPU)
    repository = Path(convert(request, tmp_path / "store")["repository"])
    native = text_format.Parse((repository / "cnn" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert native.platform in ("onnxruntime_onnx", "pytorch_libtorch")
    assert native.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU

    assert python_shadow(repository, tmp_path / "shadow", link_root="/models/converted/key") == ["cnn"]
    cfg = text_format.Parse((tmp_path / "shadow" / "cnn" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (cfg.backend, cfg.platform) == ("python", "")
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert (cfg.max_batch_size, list(cfg.input), list(cfg.output)) == (
        native.max_batch_size, list(native.input), list(native.output))
    link = tmp_path / "shadow" / "cnn" / "1" / artifact
    assert link.is_symlink() and str(link.readlink()) == f"/models/converted/key/cnn/1/{artifact}"
    assert runner in (tmp_path / "shadow" / "cnn" / "1" / "model.py").read_text()
    # The original repository is left as it was.
    assert text_format.Parse((repository / "cnn" / "config.pbtxt").read_text(), mc.ModelConfig()) == native


def test_a_platform_without_a_python_stand_in_is_refused_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\nplatform: "tensorrt_plan"\n')
    with pytest.raises(ShadowUnsupported, match="tensorrt_plan"):
        python_shadow(tmp_path / "repo", tmp_path / "shadow")
