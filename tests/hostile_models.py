"""Hostile model files and sources, as an attacker would craft them: each payload writes a marker file when its code
runs, so a test can prove that nothing ran. Made in the test, from torch, TensorFlow and Keras themselves."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # as the converter runs Keras, whichever test imports it first


class Payload:
    """A pickle that writes `marker` when it is unpickled: any loader that unpickles it runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = pathlib.Path(marker)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.write_text, (self.marker, "code from a model file ran"))


def _pickled(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    return buf.getvalue()


class Affine(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.offset = torch.tensor([1.0, 2.0, 3.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.offset


AFFINE_SIGNATURE = {"inputs": [{"name": "x", "dataType": "FP32", "shape": [4]}],
                    "outputs": [{"name": "y", "dataType": "FP32", "shape": [3]}]}


def _rewrite(src: Path, dst: Path, change: Callable[[str, dict[str, bytes]], None]) -> Path:
    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    change(next(iter(members)).split("/")[0], members)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return dst


def exported(path: Path) -> Path:
    torch.export.save(torch.export.export(Affine(), (torch.randn(2, 4),)), str(path))
    return path


def pt2_pickled_constant(d: Path, marker: Path) -> Path:
    """A .pt2 whose constant is 'pickled' (its config says use_pickle) and is the payload."""
    return _rewrite(exported(d / "clean.pt2"), d / "constant.pt2", _pickle_payload("constants", marker))


def pt2_pickled_weight(d: Path, marker: Path) -> Path:
    return _rewrite(exported(d / "clean.pt2"), d / "weight.pt2", _pickle_payload("weights", marker))


def _pickle_payload(kind: str, marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    """An archive change: the first entry of data/<kind>/ is marked use_pickle and replaced by the payload."""
    def change(top: str, m: dict[str, bytes]) -> None:
        name = f"{top}/data/{kind}/model_{kind}_config.json"
        config = json.loads(m[name])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        m[f"{top}/data/{kind}/{entry['path_name']}"] = _pickled(marker)
        m[name] = json.dumps(config).encode()
    return change


def pt2_sample_inputs(d: Path, marker: Path) -> Path:
    """Sample inputs are unpickled with a fallback to weights_only=False: the payload goes there."""
    def change(top: str, m: dict[str, bytes]) -> None:
        m[f"{top}/data/sample_inputs/model.pt"] = _pickled(marker)
    return _rewrite(exported(d / "clean.pt2"), d / "samples.pt2", change)


def pt2_custom_object(d: Path, marker: Path) -> Path:
    """A constant stored as a custom (torchbind) object: unpickled by torch's own pickler, as code."""
    def change(top: str, m: dict[str, bytes]) -> None:
        name = f"{top}/data/constants/model_constants_config.json"
        config = json.loads(m[name])
        for entry in config["config"].values():
            entry["path_name"] = "custom_obj_0"
        m[f"{top}/data/constants/custom_obj_0"] = _pickled(marker)
        m[name] = json.dumps(config).encode()
    return _rewrite(exported(d / "clean.pt2"), d / "custom.pt2", change)


def pt2_file_op(d: Path, marker: Path) -> Path:
    """A program whose graph calls aten.save (written by hand into the archive's JSON, escaped as JSON allows)."""
    def change(top: str, m: dict[str, bytes]) -> None:
        name = f"{top}/models/model.json"
        text = m[name].decode().replace('"torch.ops.aten.add.Tensor"', '"torch.ops.aten.sa\\u0076e.default"')
        assert "sa\\u0076e" in text, "the export's graph has no add to replace"
        m[name] = text.encode()
    return _rewrite(exported(d / "clean.pt2"), d / "fileop.pt2", change)


class ReadsAFile(torch.nn.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        secret = torch.from_file(self.target, size=8, dtype=torch.uint8)
        return x + secret.float().sum()


class WritesAFile(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.marker)
        return x * 2


class WritesOnLoad(torch.nn.Module):
    """Its __setstate__ runs inside torch.jit.load, before any forward."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.weight = torch.ones(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight, self.marker, self.training = state[0], state[1], state[2]
        torch.save(self.weight, self.marker)


def torchscript(module: torch.nn.Module, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(module).save(str(path))
    return path


def torchscript_respaced(module: torch.nn.Module, path: Path) -> Path:
    """The same archive with its code rewritten by hand: `torch . save` (still valid TorchScript)."""
    def change(top: str, m: dict[str, bytes]) -> None:
        for name in [n for n in m if n.endswith(".py") and "/code/" in f"/{n}"]:
            m[name] = m[name].replace(b"torch.save(", b"torch . save (").replace(b"torch.from_file(",
                                                                               b"torch .from_file(")
    return _rewrite(torchscript(module, path.with_suffix(".plain.pt")), path, change)


TF_FILE_OPS = """
import sys
import tensorflow as tf


class Leaky(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(tf.ones([4, 1]))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def __call__(self, x):
        what = sys.argv[2]
        if what == "write":
            tf.io.write_file(sys.argv[3], "code from a model file ran")
            y = x @ self.w
        elif what == "read":
            leaked = tf.strings.length(tf.io.read_file(sys.argv[3]))
            y = x @ self.w + tf.cast(leaked, tf.float32)
        else:
            y = x @ self.w
        return {"y": y}


model = Leaky()
tf.saved_model.save(model, sys.argv[1], signatures={"serving_default": model.__call__})
"""


def saved_model(path: Path, what: str, target: str = "") -> Path:
    """A SavedModel whose serving function writes a file (`write`), reads one (`read`), or neither (`clean`); made
    by TensorFlow in a process of its own."""
    from modelyard.convert.models import tf_environment

    subprocess.run([sys.executable, "-c", TF_FILE_OPS, str(path), what, target], check=True, env=tf_environment(),
                   timeout=600, capture_output=True)
    return path


def keras_lambda(path: Path, marker: Path) -> Path:
    """A Keras model with a Lambda layer whose function writes the marker when it runs."""
    import keras

    def payload(t: object) -> object:
        pathlib.Path(marker).write_text("code from a model file ran")
        return t

    keras.Sequential([keras.Input((4,), name="x"), keras.layers.Lambda(payload)]).save(str(path))
    marker.unlink(missing_ok=True)  # building the model ran the Lambda once; the file alone must not
    return path


def npz_with_pickle(path: Path, marker: Path) -> Path:
    """An .npz whose array is an object array holding the payload."""
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(marker)
    np.savez(path, x=arr)
    return path


def npz_bomb(path: Path, gib: float) -> Path:
    """A small .npz (deflated zeros) that inflates to `gib` GiB."""
    n = int(gib * (1 << 30)) // 4
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z, z.open("x.npy", "w",
                                                                                       force_zip64=True) as out:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n // 4, 4)})
        out.write(header.getvalue())
        zeros = bytes(1 << 24)
        left = n * 4
        while left > 0:
            out.write(zeros[: min(len(zeros), left)])
            left -= len(zeros)
    return path


def npz_huge_header(path: Path) -> Path:
    """A tiny .npz whose array header declares 1e6 x 1e6 floats (4 TB): numpy would allocate it before reading."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue() + bytes(64))
    return path
