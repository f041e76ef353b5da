"""No code from a model file, ever: each format is inspected before its loader sees it.

- torch.export (.pt2): its loader unpickles weights, constants and sample inputs with `weights_only=False`, and
  custom objects with plain pickle. Every member that is not raw tensor bytes or JSON metadata must load under
  `torch.load(weights_only=True)` (tensors and containers of them), and an archive with custom or opaque objects
  is refused, so by the time torch.export.load unpickles a member it can only rebuild tensors. The program's JSON
  may name no operator that touches files or the network (FILE_OPS).
- TorchScript: `torch.jit.load` compiles the archive's code and runs `__setstate__` while loading. The code's
  text is read first: a call to an operator in FILE_OPS (torch.save, torch.from_file, ...) anywhere in it refuses
  the archive. After loading, every method's graph is checked again, inlined.
- SavedModel: TensorFlow runs what the graph says. saved_model.pb is parsed (with a schema of the few fields
  needed, so TensorFlow need not be installed) and a graph or function with an op that reads or writes files,
  runs Python or talks to a debugger or a summary writer is refused; the checkpoint ops of TensorFlow's own
  save and restore functions are the only file ops allowed, and only there.
- Keras: safe mode (Lambda bytecode is refused) and the config check in models.py; ONNX: onnxruntime runs no code
  from a model and external data stays inside the model's directory (onnxdata.py); .npz samples: no pickles, and
  their unpacked size is read from the archive before any array is (samples_size).
- `conversion.modelClass` and `kerasCustomObjects` import code of the converter image, only from the modules the
  operator's administrator allows (check_importable), never the standard library or the converter's own
  dependencies.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
import zipfile
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from modelyard.codepolicy import module_refusal
from modelyard.convert.errors import SourceRefused, SourceUnreadable

FILE_OPS = ("aten::from_file", "aten::save", "debugprims::", "c10d::", "_c10d_functional::", "c10d_functional::",
            "symm_mem::", "_dtensor::")
"""torch operators that read or write files (`torch.from_file`, `torch.save`, the debug loader) or talk to other
processes (the distributed collectives): no model computes with them. An entry ending in :: is a whole namespace."""


def _denied_op(qualified: str) -> bool:
    return any(qualified == d or (d.endswith("::") and qualified.startswith(d)) for d in FILE_OPS)


def _ops_in_dotted(name: str) -> Iterator[str]:
    """The torch operators a dotted name in TorchScript code or an export graph can call: torch.X is aten::X,
    ops.NS.X (torch.ops.NS.X.overload) is NS::X."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part == "ops" and i + 2 < len(parts):
            yield f"{parts[i + 1]}::{parts[i + 2]}"
    if len(parts) >= 2 and parts[0] == "torch":
        yield f"aten::{parts[1]}"


def _dotted_names(code: str) -> Iterator[str]:
    """Every dotted name in Python-syntax code (`torch . save` too), from its tokens."""
    current: list[str] = []
    expect_name = True
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise SourceUnreadable(f"the TorchScript code cannot be read: {exc}") from exc
    for tok in tokens:
        if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            continue
        if tok.type == tokenize.NAME and expect_name:
            current.append(tok.string)
            expect_name = False
        elif tok.type == tokenize.OP and tok.string == "." and current and not expect_name:
            expect_name = True
        else:
            if current:
                yield ".".join(current)
            current = [tok.string] if tok.type == tokenize.NAME else []
            expect_name = tok.type != tokenize.NAME
    if current:
        yield ".".join(current)


def _refuse_ops(ops: Iterable[str], where: str) -> None:
    bad = sorted({op for op in ops if _denied_op(op)})
    if bad:
        raise SourceRefused(f"{where} calls {', '.join(bad)}, which read or write files or reach other processes: "
                            "a model's computation needs none of them, and the converter runs none from a model file")


def check_torchscript_archive(path: Path) -> None:
    """Refuse a TorchScript archive whose code calls a FILE_OPS operator, before torch.jit.load compiles it (loading
    runs __setstate__)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return  # not a zip: torch.jit.load refuses it with its own words
    with archive:
        for info in archive.infolist():
            member = PurePosixPath(info.filename)
            if "code" in member.parts[:-1] and member.suffix == ".py":
                text = archive.read(info).decode("utf-8", errors="replace")
                found = [op for name in _dotted_names(text) for op in _ops_in_dotted(name)]
                _refuse_ops(found, f"{path.name}'s TorchScript code ({member.name})")


def check_torchscript_graphs(module: Any, name: str) -> None:
    """Every method of a loaded TorchScript module and its submodules, inlined: no FILE_OPS node."""
    import torch

    found: list[str] = []
    for sub in [module, *module.modules()]:
        c = getattr(sub, "_c", None)
        if c is None:
            continue
        for method in c._method_names():
            graph = c._get_method(method).graph.copy()
            torch._C._jit_pass_inline(graph)
            found += [node.kind() for node in graph.nodes()]
            found += [n.kind() for node in graph.nodes() for b in node.blocks() for n in b.nodes()]
    _refuse_ops(found, f"{name}'s TorchScript graph")


_PT2_METADATA = re.compile(r"(^|/)(archive_format|archive_version|byteorder|version|\.data/.*|extra/.*|.*\.json)$")
_CUSTOM_OBJECTS = ("custom_obj_", "opaque_obj_")


def check_pt2(path: Path) -> None:
    """Refuse a torch.export archive whose pickled members hold more than tensors, that carries custom or opaque
    objects (code), or whose program calls a FILE_OPS operator."""
    import torch

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceUnreadable(f"{path.name} is not a torch.export archive (torch.export.save): {exc}") from exc
    with archive:
        names = archive.namelist()
        raw: set[str] = set()
        for name in names:
            if not name.endswith("_config.json") or "/data/" not in f"/{name}":
                continue
            config = _json(archive, name).get("config", {})
            for fqn, meta in (config.items() if isinstance(config, dict) else ()):
                entry = str(PurePosixPath(name).parent / str(meta.get("path_name", "")))
                if str(meta.get("path_name", "")).startswith(_CUSTOM_OBJECTS):
                    raise SourceRefused(f"{path.name} holds a custom object ({fqn}, member {entry}): it would be "
                                        "unpickled as code, which the converter never does; export the model without "
                                        "torchbind or opaque objects")
                if not meta.get("use_pickle"):
                    raw.add(entry)
        for name in names:
            if name in raw or name.endswith("/") or _PT2_METADATA.search(name):
                continue
            data = archive.read(name)
            try:
                loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as exc:  # UnpicklingError for a global outside the weights-only allowlist, and others
                raise SourceRefused(
                    f"{path.name}: member {name} is a pickle that holds more than tensors ({_unpickler_detail(exc)}); "
                    "torch.export.load would unpickle it as code, so the archive is not loaded") from None
            if not _only_tensors(loaded):
                raise SourceRefused(f"{path.name}: member {name} holds a {type(loaded).__name__}, not tensors: the "
                                    "archive is not loaded")
        for name in names:
            if name.endswith(".json"):
                strings = _strings(_json(archive, name))
                found = [op for s in strings for op in _ops_in_dotted(s)]
                _refuse_ops(found, f"{path.name}'s program ({PurePosixPath(name).name})")


def _unpickler_detail(exc: Exception) -> str:
    """What the weights-only unpickler refused (`GLOBAL os.system`), without torch's advice and terminal codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: (GLOBAL [\w.]+)|Unsupported operand \d+|Unsupported class [\w.]+", text)
    return found.group(1) or found.group(0) if found else f"{type(exc).__name__}: {text.splitlines()[0][:160]}"


def _json(archive: zipfile.ZipFile, name: str) -> Any:
    try:
        return json.loads(archive.read(name))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceUnreadable(f"member {name} is not JSON: {exc}") from exc


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _only_tensors(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor | int | float | bool | str | bytes | torch.dtype | torch.device | torch.Size) \
            or value is None:
        return True
    if isinstance(value, dict):
        return all(_only_tensors(k) and _only_tensors(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_only_tensors(v) for v in value)
    return False


# SavedModel ----------------------------------------------------------------------------------------------------

TF_FILE_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "Save", "SaveSlices", "SaveV2", "Restore", "RestoreSlice", "RestoreV2", "MergeV2Checkpoints",
    "LoadAndRemapMatrix", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "PrintV2",
    "CacheDataset", "CacheDatasetV2", "SaveDataset", "SaveDatasetV2", "LoadDataset", "DatasetToTFRecord",
    "SnapshotDataset", "SnapshotDatasetV2", "MatchingFilesDataset",
})
TF_FILE_PATTERN = re.compile(r"^(Write|CreateSummary|ImportEvent|Debug|Gcs|BigQuery|Experimental(Sql|LMDB|CSV))|"
                             r"(Record|Text|Line|File|CSV|Sql|LMDB|Snapshot)(Reader|Dataset)(V\d)?$")
TF_CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints"})
"""Allowed only in TensorFlow's own save and restore functions (and TF1's save/ scope), which serving never calls."""
_SAVER_FUNCTION = re.compile(r"^__inference__traced_(save|restore)_\d+$")


@cache
def _saved_model_schema() -> Any:
    """SavedModel -> MetaGraphDef -> GraphDef -> NodeDef/FunctionDef: only the fields the check reads, by their
    numbers in tensorflow/core/protobuf (unknown fields are kept, and ignored)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="modelyard_saved_model_ops.proto", package="modelyard.tfops",
                                           syntax="proto3")
    repeated, optional = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED, \
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    string, message = descriptor_pb2.FieldDescriptorProto.TYPE_STRING, descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE

    def add(name: str, fields: list[tuple[str, int, Any, Any, str]]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, label, ftype, type_name in fields:
            m.field.add(name=fname, number=number, label=label, type=ftype,
                        **({"type_name": f".modelyard.tfops.{type_name}"} if type_name else {}))

    add("NodeDef", [("name", 1, optional, string, ""), ("op", 2, optional, string, ""),
                    ("input", 3, repeated, string, "")])
    add("SaverDef", [("save_tensor_name", 2, optional, string, ""), ("restore_op_name", 3, optional, string, "")])
    add("OpDef", [("name", 1, optional, string, "")])
    add("FunctionDef", [("signature", 1, optional, message, "OpDef"), ("node_def", 3, repeated, message, "NodeDef")])
    add("FunctionDefLibrary", [("function", 1, repeated, message, "FunctionDef")])
    add("GraphDef", [("node", 1, repeated, message, "NodeDef"), ("library", 2, optional, message,
                                                                   "FunctionDefLibrary")])
    add("MetaGraphDef", [("graph_def", 2, optional, message, "GraphDef"),
                         ("saver_def", 3, optional, message, "SaverDef")])
    add("SavedModel", [("meta_graphs", 2, repeated, message, "MetaGraphDef")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("modelyard.tfops.SavedModel"))


def _tf_op_denied(op: str) -> bool:
    return op in TF_FILE_OPS or bool(TF_FILE_PATTERN.search(op))


def _node_name(tensor: str) -> str:
    """The node of a tensor or control input: ^name, name:0 -> name."""
    return tensor.lstrip("^").split(":", 1)[0]


def _calls(blob: bytes, function: str) -> bool:
    """Whether a serialized NodeDef names `function` (as its op or a function attribute): the name as a whole
    protobuf string (its length, then its bytes), so __traced_save_9 is not found in __traced_save_95."""
    encoded = function.encode()
    return len(encoded) < 128 and bytes([len(encoded)]) + encoded in blob


def _saved_model_problems(meta: Any) -> list[str]:
    """What in one meta graph runs a file op outside TensorFlow's own checkpointing.

    TensorFlow saves and restores variables with SaveV2/RestoreV2, in functions named __inference__traced_save_N
    and __inference__traced_restore_N (TF2) or in the save/ scope (TF1), which the saver_def names. Those are
    allowed there and only there: no other node or function may call the saver functions or take an input from
    the saver's nodes, so serving never runs them."""
    graph = meta.graph_def
    saver_tensors = [_node_name(t) for t in (meta.saver_def.save_tensor_name, meta.saver_def.restore_op_name) if t]
    scopes = {t.rsplit("/", 1)[0] + "/" for t in saver_tensors if "/" in t}
    saver_nodes = {n.name for n in graph.node
                   if n.name in saver_tensors or any(n.name.startswith(scope) for scope in scopes)}
    savers = {fn.signature.name for fn in graph.library.function if _SAVER_FUNCTION.match(fn.signature.name)}
    bad: list[str] = []
    for node in graph.node:
        if node.name in saver_nodes:
            if _tf_op_denied(node.op) and node.op not in TF_CHECKPOINT_OPS:
                bad.append(f"{node.op} (node {node.name})")
            continue
        if _tf_op_denied(node.op):
            bad.append(f"{node.op} (node {node.name})")
        blob = node.SerializeToString()
        bad += [f"a call of TensorFlow's checkpoint function {f} from node {node.name}" for f in savers
                if _calls(blob, f)]
        bad += [f"node {node.name} takes an input from the saver's node {_node_name(i)}" for i in node.input
                if _node_name(i) in saver_nodes]
    for fn in graph.library.function:
        saver = fn.signature.name in savers
        for node in fn.node_def:
            if _tf_op_denied(node.op) and not (saver and node.op in TF_CHECKPOINT_OPS):
                bad.append(f"{node.op} (in function {fn.signature.name})")
            if not saver:
                blob = node.SerializeToString()
                bad += [f"a call of TensorFlow's checkpoint function {f} from function {fn.signature.name}"
                        for f in savers if _calls(blob, f)]
    return bad


def check_saved_model(directory: Path) -> None:
    """Refuse a SavedModel whose graph reads or writes files, runs Python or reaches a debugger (TF_FILE_OPS),
    outside TensorFlow's own checkpoint functions, which nothing else may call."""
    pb = directory / "saved_model.pb"
    if not pb.is_file():
        return  # the caller says what a SavedModel directory must hold
    schema = _saved_model_schema()
    saved = schema()
    try:
        saved.ParseFromString(pb.read_bytes())
    except Exception as exc:  # DecodeError: not a SavedModel
        raise SourceUnreadable(f"{directory.name} is not a SavedModel TensorFlow can load: its saved_model.pb does not "
                               f"parse ({exc})"[:400]) from exc
    bad: list[str] = []
    for meta in saved.meta_graphs:
        bad += _saved_model_problems(meta)
    if bad:
        raise SourceRefused(f"{directory.name} runs ops that read or write files, run Python or reach a debugger: "
                            f"{', '.join(sorted(set(bad))[:6])}; the converter runs none from a model file (and Triton "
                            "would run them while serving)")


# Code of the converter image, named by the spec ----------------------------------------------------------------

def check_importable(field: str, name: str, allowed: Iterable[str]) -> None:
    """Refuse `module:Name` unless the administrator allows its module (modelyard.codepolicy)."""
    refusal = module_refusal(field, name, allowed)
    if refusal:
        raise SourceRefused(refusal)


# Samples ---------------------------------------------------------------------------------------------------------

def samples_size(path: Path) -> int:
    """The bytes an .npz's arrays take once unpacked, read from the archive's directory and each array's header
    (nothing is decompressed beyond the headers)."""
    import numpy as np
    from numpy.lib import format as npformat

    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            declared = 0  # what numpy would allocate for the array, from its header's shape and dtype
            with archive.open(info) as fh:
                try:
                    version = npformat.read_magic(fh)  # type: ignore[no-untyped-call]
                    shape, _, dtype = npformat._read_array_header(fh, version)  # type: ignore[attr-defined]
                    declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                except Exception:
                    pass
            total += max(info.file_size, declared)
    return total
