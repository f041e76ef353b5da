"""Load a source model and run it, whatever its format: one `Runnable` for sources and converted artifacts alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.api.v1alpha1 import DataType, ModelFormat, ModelSignature
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ConversionFailed, ConversionUnsupported, SourceRefused, SourceUnreadable
from modelyard.convert.nocode import check_pt2, check_torchscript_archive, check_torchscript_graphs

DTYPES: dict[DataType, Any] = {
    DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT8: np.int8, DataType.INT16: np.int16,
    DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.FP16: np.float16, DataType.FP32: np.float32,
    DataType.FP64: np.float64,
}
ONNX_TO_DATATYPE = {
    "tensor(bool)": DataType.BOOL, "tensor(uint8)": DataType.UINT8, "tensor(int8)": DataType.INT8,
    "tensor(int16)": DataType.INT16, "tensor(int32)": DataType.INT32, "tensor(int64)": DataType.INT64,
    "tensor(float16)": DataType.FP16, "tensor(float)": DataType.FP32, "tensor(double)": DataType.FP64,
    "tensor(string)": DataType.BYTES,
}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: DataType
    dims: tuple[int, ...]
    """Without the batch dimension; -1 is variable."""


@dataclass
class Runnable:
    """A model that maps named numpy inputs to a list of numpy outputs."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    run: Callable[[dict[str, NDArray[Any]]], list[NDArray[Any]]]
    torch_module: Any = None
    """The torch module behind it, for torch sources (export and pruning work on it)."""
    kind: str = "torch"
    exported_program: Any = None
    """For torch.export (.pt2) sources: the program, which the dynamo-based ONNX exporter takes as it is."""
    keras_model: Any = None
    """For Keras sources: the model, loaded on Keras's torch backend; it exports itself to ONNX."""
    saved_model: Path | None = None
    """For SavedModel sources: the directory, which tf2onnx converts."""


def _signature_tensors(signature: ModelSignature | None, what: str) -> tuple[list[Tensor], list[Tensor]]:
    if signature is None:
        raise ConversionUnsupported(
            f"{what} does not record its inputs and outputs: set spec.model.signature (names, dataType, shape)"
        )
    def tensors(specs: list[Any]) -> list[Tensor]:
        return [Tensor(t.name, t.data_type, tuple(t.shape)) for t in specs]

    return tensors(signature.inputs), tensors(signature.outputs)


def flat_outputs(result: Any, names: list[str]) -> list[Any]:
    """A torch model's outputs as the flat list its ONNX export has: a tensor, a tuple or list of them, or a dict
    (its values in the order it returns them, as the exporter flattens it). A dict whose keys are the signature's
    output names in another order is refused: the served outputs would carry each other's names."""
    if isinstance(result, dict):
        keys = [str(k) for k in result]
        if set(keys) == set(names) and keys != names:
            raise ConversionUnsupported(
                f"the model returns a dict with keys {keys}, and model.signature lists its outputs as {names}: list "
                "them in the order the model returns them, which is the order they are exported and served in")
        items: list[Any] = list(result.values())
    elif isinstance(result, tuple | list):
        items = list(result)
    else:
        items = [result]
    nested = [type(i).__name__ for i in items if not hasattr(i, "detach")]
    if nested:
        raise ConversionUnsupported(
            f"the model returns {type(result).__name__} holding {', '.join(sorted(set(nested)))} besides tensors: "
            "return tensors (a tensor, a tuple or list of them, or a dict of them), e.g. with a wrapper module "
            "whose forward picks them out")
    return items


def _torch_runnable(module: Any, inputs: list[Tensor], outputs: list[Tensor]) -> Runnable:
    import torch

    # no_grad, not inference_mode: a traced transformer saves tensors "for backward" inside its graph, and
    # tensors made in inference mode may not be saved ("Inference tensors cannot be saved for backward").
    for p in getattr(module, "parameters", lambda: [])():
        p.requires_grad_(False)

    def run(feed: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        args = [torch.from_numpy(np.ascontiguousarray(feed[t.name])) for t in inputs]
        with torch.no_grad():
            result = module(*args)
        return [r.detach().cpu().numpy() for r in flat_outputs(result, [t.name for t in outputs])]

    return Runnable(inputs, outputs, run, torch_module=module, kind="torch")


def onnx_runnable(path: Path, batched: bool) -> Runnable:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def tensors(args: list[Any]) -> list[Tensor]:
        out = []
        for a in args:
            dims = [d if isinstance(d, int) else -1 for d in a.shape]
            out.append(Tensor(a.name, ONNX_TO_DATATYPE[a.type], tuple(dims[1:] if batched else dims)))
        return out

    names = [o.name for o in session.get_outputs()]

    def run(feed: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        return [np.asarray(x) for x in session.run(names, feed)]

    return Runnable(tensors(session.get_inputs()), tensors(session.get_outputs()), run, kind="onnx")


def load_source(path: Path, fmt: ModelFormat, signature: ModelSignature | None, conversion: Conversion,
                batched: bool) -> Runnable:
    """Load the source model, refusing anything that would unpickle code."""
    if fmt == ModelFormat.ONNX:
        try:
            return onnx_runnable(path, batched)
        except Exception as exc:  # onnxruntime's InvalidGraph, Fail, NotImplemented: a graph it cannot run
            raise SourceUnreadable(f"onnxruntime cannot load {path.name}: {type(exc).__name__}: "
                                   f"{str(exc)[:500]}") from exc
    if fmt == ModelFormat.TENSORFLOW_SAVEDMODEL:
        return tensorflow_runnable(path, signature)
    if fmt == ModelFormat.KERAS:
        return keras_runnable(path, signature, conversion.keras_custom_objects or [])
    import torch

    inputs, outputs = _signature_tensors(signature, f"a {fmt} source")
    if fmt == ModelFormat.TORCHSCRIPT:
        check_torchscript_archive(path)  # before loading: torch.jit.load runs the archive's __setstate__
        try:
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise SourceRefused(
                f"{path.name} is not a TorchScript archive (torch.jit.save); a module saved with torch.save is "
                "pickled code: export it with torch.jit.script/trace, or use format pytorch with "
                f"conversion.modelClass and a state_dict ({exc.__class__.__name__})"
            ) from exc
        check_torchscript_graphs(module, path.name)
        return _torch_runnable(module.eval(), inputs, outputs)
    # format: pytorch
    if path.suffix == ".pt2":
        check_pt2(path)  # torch.export.load unpickles members as code: only tensors get that far
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # a zip that is not a torch.export archive, a truncated file
            raise SourceUnreadable(f"{path.name} is not a torch.export archive (torch.export.save): "
                                   f"{type(exc).__name__}: {str(exc)[:400]}") from exc
        runnable = _torch_runnable(program.module(), inputs, outputs)
        runnable.exported_program = program
        return runnable
    if not conversion.model_class:
        raise SourceRefused(
            "a pickled PyTorch module is arbitrary code and is not loaded: save it with torch.export (.pt2) or "
            "torch.jit (format torchscript), or name its class in conversion.modelClass (module:Class) and "
            "supply a state_dict, which is loaded with torch.load(weights_only=True)"
        )
    cls = import_named("conversion.modelClass", conversion.model_class)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and others for anything but plain tensors
        raise SourceRefused(
            f"{path.name} is not a plain state_dict (torch.load with weights_only=True refused it: {exc})"
        ) from exc
    kwargs = conversion.model_class_args or {}
    try:
        module = cls(**kwargs)
    except Exception as exc:
        raise ConversionFailed(f"conversion.modelClass {conversion.model_class}({', '.join(sorted(kwargs))}) "
                               f"failed: {type(exc).__name__}: {exc}; set conversion.modelClassArgs to what it "
                               "takes"[:800]) from exc
    try:
        module.load_state_dict(state)
    except Exception as exc:  # missing or unexpected keys, shape mismatches
        raise SourceUnreadable(f"{path.name} does not fit conversion.modelClass {conversion.model_class}: "
                               f"{type(exc).__name__}: {str(exc)[:600]}") from exc
    return _torch_runnable(module.eval(), inputs, outputs)


def import_named(field: str, name: str) -> Any:
    """The object a spec field names as module:Name, imported from the converter image's code."""
    import importlib

    module_name, attr = name.split(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SourceRefused(f"{field} {name} cannot be imported: {exc}; its code must be in the converter image "
                            "(docs/conversion.md)") from exc


KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def _first_paragraph(exc: Exception) -> str:
    """An error's first paragraph: Keras appends the whole model config to its deserialization errors."""
    return str(exc).split("\n\n")[0][:700]


def _keras() -> Any:
    """Keras 3 on its torch backend: the converter's torch does the work, TensorFlow is not needed."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise ConversionUnsupported(f"Keras runs on its {keras.backend.backend()} backend here; the converter needs "
                                    "KERAS_BACKEND=torch")
    return keras


def keras_config(path: Path) -> dict[str, Any] | None:
    """The model's config as saved (JSON, read without Keras and without running anything): config.json in a
    .keras archive, the model_config attribute of an .h5 file. None when it cannot be read (Keras's loader then
    says why)."""
    import json

    try:
        if path.suffix == ".keras":
            import zipfile

            with zipfile.ZipFile(path) as archive:
                return dict(json.loads(archive.read("config.json")))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            return dict(json.loads(raw.decode() if isinstance(raw, bytes) else raw)) if raw is not None else None
    except Exception:  # a truncated or foreign file: the loader's error is the one to show
        return None


KERAS_MARKERS = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__typespec__",
                           "__ellipsis__", "__slice__", "Functional"})
"""class_name values of a saved Keras config that name no class to import: how Keras 3 serializes a functional
model's tensor references and constant values, and its functional Model class (in an .h5 config without a module;
Keras itself loads it). A Lambda's `__lambda__` is not one of them: safe mode refuses its code."""


def keras_foreign_classes(config: Any, keras_has: Callable[[str], bool]) -> set[tuple[str, str]]:
    """(module, class name) of every object in a saved Keras config whose class is not Keras's own. A .keras
    config names each class's module; an .h5 one often names the class alone (module "" here), or its registered
    name (package>Class), and `keras_has` says whether Keras has a class of that name. A Lambda's function is
    not a class: safe mode refuses it."""
    found: set[tuple[str, str]] = set()
    if isinstance(config, dict):
        module, name = config.get("module"), config.get("class_name")
        if name in KERAS_MARKERS:  # Keras's own serialization of values, not a class: nothing is imported
            pass
        elif isinstance(name, str) and isinstance(module, str):
            if module.split(".")[0] not in ("keras", "builtins"):
                found.add((module, name))
        elif isinstance(name, str) and "config" in config and "module" not in config and name != "__lambda__":
            package, _, short = name.rpartition(">")
            if package or not keras_has(name):
                found.add((package, short))
        for value in config.values():
            found |= keras_foreign_classes(value, keras_has)
    elif isinstance(config, list):
        for value in config:
            found |= keras_foreign_classes(value, keras_has)
    return found


def _has_lambda(config: Any) -> bool:
    """Whether a saved Keras config holds a Lambda layer (its function is Python bytecode)."""
    if isinstance(config, dict):
        return config.get("class_name") == "Lambda" or any(_has_lambda(v) for v in config.values())
    if isinstance(config, list):
        return any(_has_lambda(v) for v in config)
    return False


def _keras_has(keras: Any, name: str) -> bool:
    """Whether Keras itself has a class (layer, model, initializer, ...) of this name."""
    return any(hasattr(m, name) for m in (keras.layers, keras.models, keras.initializers, keras.regularizers,
                                          keras.constraints, keras.activations, keras))


def _keras_custom_objects(keras: Any, path: Path, names: list[str]) -> dict[str, Any]:
    """conversion.kerasCustomObjects imported, by class name and by registered name; refused before any import when
    the saved model uses a class that they do not name."""
    given = {name.split(":")[1] for name in names}
    config = keras_config(path)
    foreign = keras_foreign_classes(config, lambda n: _keras_has(keras, n)) if config else set()
    missing = sorted(f"{m}.{c}" if m else c for m, c in foreign if c not in given)
    if missing:
        raise SourceRefused(
            f"{path.name} uses classes from outside Keras: {', '.join(missing[:8])}. The model file never brings "
            "code: name each in conversion.kerasCustomObjects (module:Class) and build a converter image with "
            "their code (docs/conversion.md)")
    objects: dict[str, Any] = {}
    for name in names:
        obj = import_named("conversion.kerasCustomObjects", name)
        objects[name.split(":")[1]] = obj
        registered = keras.saving.get_registered_name(obj)
        if registered:
            objects[registered] = obj
    return objects


def keras_runnable(path: Path, signature: ModelSignature | None, custom_objects: list[str]) -> Runnable:
    """A .keras (Keras 3) or .h5 (Keras 2) file, loaded in safe mode: a Lambda layer's Python code is refused,
    never run, and a class from outside Keras is loaded only from code in the converter image that
    `custom_objects` (conversion.kerasCustomObjects) names."""
    if path.suffix not in KERAS_SUFFIXES:
        raise SourceUnreadable(f"{path.name} is not a Keras file: format keras takes a .keras (Keras 3) or .h5 "
                               "(Keras 2) file; a SavedModel directory is format tensorflow-savedmodel")
    keras = _keras()
    if _has_lambda(keras_config(path)):  # refused before Keras reads the file, however deep the Lambda is
        raise SourceRefused(f"{path.name} holds Python code (a Lambda layer), which is not loaded: replace the "
                            "Lambda with Keras layers, or with a layer class of yours named in "
                            "conversion.kerasCustomObjects (docs/conversion.md)")
    objects = _keras_custom_objects(keras, path, custom_objects)
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True, custom_objects=objects or None)
    except ValueError as exc:
        if "arbitrary code" in str(exc) or "safe_mode" in str(exc):
            raise SourceRefused(f"{path.name} holds Python code (a Lambda layer), which is not loaded: replace the "
                                "Lambda with Keras layers, or with a layer class of yours named in "
                                "conversion.kerasCustomObjects (docs/conversion.md)") from exc
        raise SourceUnreadable(f"{path.name} is not a Keras model Keras {keras.__version__} can load: "
                               f"{_first_paragraph(exc)}") from exc
    except Exception as exc:  # h5py, zipfile and json errors for truncated or foreign files; from_config failures
        raise SourceUnreadable(f"{path.name} is not a Keras model Keras {keras.__version__} can load: "
                               f"{type(exc).__name__}: {_first_paragraph(exc)}") from exc

    def tensors(items: list[Any], declared: list[Any] | None, prefix: str) -> list[Tensor]:
        out = []
        for i, item in enumerate(items):
            dims = tuple(-1 if d is None else int(d) for d in item.shape[1:])
            dtype = DataType.FP32 if "float" in str(item.dtype) else ONNX_TO_DATATYPE.get(f"tensor({item.dtype})",
                                                                                          DataType.FP32)
            name = declared[i].name if declared and i < len(declared) else (
                item.name if prefix == "input" else f"{prefix}_{i}")
            out.append(Tensor(name, dtype, dims))
        return out

    inputs = tensors(list(model.inputs), signature.inputs if signature else None, "input")
    outputs = tensors(list(model.outputs), signature.outputs if signature else None, "output")

    def run(feed: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        args = [np.ascontiguousarray(feed[t.name]) for t in inputs]
        result = model(args if len(args) > 1 else args[0], training=False)
        items = list(result) if isinstance(result, tuple | list) else [result]
        return [np.asarray(keras.ops.convert_to_numpy(r)) for r in items]

    return Runnable(inputs, outputs, run, kind="keras", keras_model=model)


def tf_environment() -> dict[str, str]:
    """The environment of TensorFlow's processes: quiet, CPU, and Keras on TensorFlow's own backend (the converter
    puts Keras on torch; inherited, it would load torch's LLVM beside TensorFlow's)."""
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "KERAS_BACKEND": "tensorflow"}


def tensorflow_runnable(path: Path, signature: ModelSignature | None) -> Runnable:
    """A SavedModel run by TensorFlow itself through its serving signature, in a worker process (tfworker.py)."""
    import atexit
    import json
    import subprocess
    import sys
    import tempfile

    worker = subprocess.Popen([sys.executable, "-m", "modelyard.convert.tfworker", str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=tf_environment())
    atexit.register(worker.kill)
    assert worker.stdin is not None and worker.stdout is not None
    stdin, stdout = worker.stdin, worker.stdout

    def receive() -> dict[str, Any]:
        line = stdout.readline()
        if not line:
            raise SourceUnreadable(f"TensorFlow exited while reading {path.name} (exit {worker.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    hello = receive()
    if "error" in hello:
        worker.kill()
        raise SourceUnreadable(f"{path.name} is {hello['error']}")
    tf_types = {"float32": DataType.FP32, "float16": DataType.FP16, "float64": DataType.FP64, "int32": DataType.INT32,
                "int64": DataType.INT64, "int8": DataType.INT8, "uint8": DataType.UINT8, "bool": DataType.BOOL}

    def tensors(items: list[list[Any]]) -> list[Tensor]:
        return [Tensor(name, tf_types.get(dtype, DataType.FP32), tuple(shape[1:])) for name, dtype, shape in items]

    inputs, outputs = tensors(hello["signature"]["inputs"]), tensors(hello["signature"]["outputs"])
    keys = [t.name for t in inputs]
    if signature is not None:  # the user's names for the same tensors, in the same order
        inputs = [Tensor(s.name, t.data_type, t.dims) for s, t in zip(signature.inputs, inputs, strict=False)]
    scratch = Path(tempfile.mkdtemp(prefix="tfworker-"))

    def run(feed: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        np.savez(scratch / "in.npz", **{key: feed[t.name] for key, t in zip(keys, inputs, strict=True)})
        stdin.write(json.dumps({"run": str(scratch / "in.npz"), "out": str(scratch / "out.npz")}) + "\n")
        stdin.flush()
        answer = receive()
        if "error" in answer:
            raise RuntimeError(answer["error"])
        with np.load(scratch / "out.npz") as out:
            return [np.asarray(out[t.name]) for t in outputs]

    return Runnable(inputs, outputs, run, kind="tensorflow", saved_model=path)


def torchscript_runnable(path: Path, inputs: list[Tensor], outputs: list[Tensor]) -> Runnable:
    import torch

    module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    return _torch_runnable(module.eval(), inputs, outputs)
