"""A python-backend shadow of a Triton model repository, for Triton builds that have only the python backend.

The CPU tritonserver of the nvidia-pytriton wheel (the local cluster's Triton) has no onnxruntime or libtorch
backend. The shadow serves the very same artifact: each model's config.pbtxt is kept but for `backend: python`
and CPU instance groups, each version directory links to the original files and gains a model.py that runs the
artifact with onnxruntime or torch. The repository itself is left as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

HERE = Path(__file__).parent
PYTHON_MODELS = {
    "onnxruntime_onnx": HERE / "triton_python_model.py",
    "onnxruntime": HERE / "triton_python_model.py",
    "pytorch_libtorch": HERE / "triton_python_torchscript.py",
    "pytorch": HERE / "triton_python_torchscript.py",
}


class ShadowUnsupported(ValueError):
    """A model in the repository uses a platform no python model here can stand in for."""


def python_shadow(repository: Path, out: Path, link_root: str | None = None) -> list[str]:
    """Write the shadow of `repository` into `out` (replacing what was there); return the models it holds.

    The shadow links to the original files: through `link_root` (where whoever serves the shadow sees
    `repository`, such as a container's /models/...) when given, else through their paths here."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    models = []
    for model_dir in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
        kind = cfg.platform or cfg.backend
        if kind != "python" and kind not in PYTHON_MODELS:
            raise ShadowUnsupported(f"model {model_dir.name}: platform {kind!r} has no python stand-in "
                                    f"(supported: {', '.join(sorted(PYTHON_MODELS))}, python)")
        cfg.ClearField("platform")
        cfg.backend = "python"
        for group in cfg.instance_group:  # GPUs are simulated on the local cluster: run on its CPUs
            if group.kind == mc.ModelInstanceGroup.KIND_GPU:
                group.kind = mc.ModelInstanceGroup.KIND_CPU
                group.ClearField("gpus")
        target = out / model_dir.name
        target.mkdir()
        (target / "config.pbtxt").write_text(str(text_format.MessageToString(cfg)))
        for version in (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            (target / version.name).mkdir()
            for item in version.iterdir():
                original = (f"{link_root.rstrip('/')}/{model_dir.name}/{version.name}/{item.name}" if link_root
                            else str(item.resolve()))
                (target / version.name / item.name).symlink_to(original)
            if kind != "python":
                shutil.copyfile(PYTHON_MODELS[kind], target / version.name / "model.py")
        models.append(model_dir.name)
    return models
