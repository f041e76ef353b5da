"""A Hugging Face checkpoint, checked before anything stages or serves it.

What is refused, each with its own reason (modelyard.convert.errors): pickled weights; code the checkpoint brings
(auto_map, Python files); a missing or unloadable tokenizer; an architecture the engine does not serve; a
safetensors file whose header disagrees with the file, or a shard index that names what is not there; a symlink
or path that leaves the checkpoint (confine.check_tree). Nothing here imports a model or runs a file's contents:
config files are read as JSON, safetensors headers as JSON with their lengths checked against the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.convert.confine import check_tree
from modelyard.convert.errors import (
    ArchitectureUnsupported,
    CustomCode,
    PickledWeights,
    SourceUnreadable,
    TokenizerUnusable,
    WeightsCorrupt,
)

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy"})
"""Files whose loading unpickles (torch.load, pickle, joblib; .npy with allow_pickle)."""
CODE_SUFFIXES = frozenset({".py", ".pyc", ".so"})
CONFIG_FILES = ("config.json", "tokenizer_config.json", "generation_config.json", "processor_config.json",
                "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
INDEX = "model.safetensors.index.json"
MAX_HEADER = 100 << 20
"""A safetensors header over 100 MiB is refused before it is read (the format's own reader has the same limit)."""

SAFETENSORS_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                     "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}

SERVED_ARCHITECTURES = frozenset({
    "BloomForCausalLM", "CohereForCausalLM", "DeepseekForCausalLM", "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM", "ExaoneForCausalLM", "FalconForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "GemmaForCausalLM", "GPT2LMHeadModel", "GPTBigCodeForCausalLM", "GPTJForCausalLM", "GPTNeoXForCausalLM",
    "GraniteForCausalLM", "InternLM2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM",
    "OlmoForCausalLM", "Olmo2ForCausalLM", "OPTForCausalLM", "Phi3ForCausalLM", "PhiForCausalLM",
    "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "StableLmForCausalLM",
    "Starcoder2ForCausalLM",
})
"""Decoder-only text models that vLLM serves with its own code; each is checked against vLLM's registry by the
test suite (tests/serving/test_vllm_serving.py), so the list never promises one the engine lacks."""


@dataclass(frozen=True)
class Checkpoint:
    root: Path
    architecture: str
    model_type: str
    dtype: str
    """The checkpoint's torch_dtype (float32, bfloat16, float16), "float32" when it says none."""
    max_position_embeddings: int | None
    weights: tuple[str, ...]
    """The safetensors files, relative to root."""
    parameters: int
    weight_bytes: int
    files: int
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "modelType": self.model_type, "dtype": self.dtype,
                "maxPositionEmbeddings": self.max_position_embeddings, "weights": list(self.weights),
                "parameters": self.parameters, "weightBytes": self.weight_bytes, "files": self.files,
                "bytes": self.bytes}


def check_checkpoint(root: Path, max_bytes: int | None = None) -> Checkpoint:
    """Every check that needs no model code; raise the refusal's own error for the first that fails."""
    if not root.is_dir():
        raise SourceUnreadable(f"{root.name} is not a directory: a huggingface checkpoint is a directory with "
                               "config.json, *.safetensors and the tokenizer files")
    tree = check_tree(root, f"the checkpoint {root.name}", max_bytes)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    pickles = [n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise PickledWeights(
            f"the checkpoint holds pickle files ({', '.join(pickles[:5])}{', ...' if len(pickles) > 5 else ''}), "
            "which can run code when loaded: nothing is staged. Save the weights as safetensors "
            "(model.save_pretrained(dir, safe_serialization=True)) and remove the pickle files")
    config = _json(root, "config.json", required=True)
    configs = {name: _json(root, name) for name in CONFIG_FILES}
    with_code = [f"{name} (auto_map)" for name, cfg in configs.items() if isinstance(cfg, dict) and "auto_map" in cfg]
    with_code += [n for n in names if Path(n).suffix.lower() in CODE_SUFFIXES]
    if with_code:
        raise CustomCode(
            f"the checkpoint brings its own code: {', '.join(with_code[:5])}. The engine never runs a checkpoint's "
            "code (no trust_remote_code); serve an architecture it has built in "
            f"({', '.join(sorted(SERVED_ARCHITECTURES)[:6])}, ...)")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if not isinstance(architecture, str) or architecture not in SERVED_ARCHITECTURES:
        said = f"names {architecture!r}" if architecture else "names no architecture (architectures)"
        raise ArchitectureUnsupported(
            f"config.json {said}, which the vllm runtime does not serve. It serves "
            f"{', '.join(sorted(SERVED_ARCHITECTURES))}")
    if not any((root / n).is_file() for n in TOKENIZER_FILES):
        raise TokenizerUnusable(f"the checkpoint has no tokenizer: none of {', '.join(TOKENIZER_FILES)}. Save it "
                                "beside the weights (tokenizer.save_pretrained(dir))")
    weights = [n for n in names if n.endswith(".safetensors")]
    if not weights:
        raise SourceUnreadable("the checkpoint has no *.safetensors weights (model.safetensors, or shards with "
                               f"{INDEX})")
    parameters = weight_bytes = 0
    tensors: dict[str, set[str]] = {}
    for name in weights:
        header = safetensors_header(root / name, name)
        tensors[name] = set(header)
        parameters += sum(math.prod(t["shape"]) for t in header.values())
        weight_bytes += (root / name).stat().st_size
    _check_index(root, tensors)
    dtype = config.get("torch_dtype") or config.get("dtype") or "float32"
    max_pos = config.get("max_position_embeddings")
    return Checkpoint(root, architecture, str(config.get("model_type", "")), str(dtype),
                      max_pos if isinstance(max_pos, int) else None, tuple(weights), parameters, weight_bytes,
                      tree.files, tree.bytes)


def _json(root: Path, name: str, required: bool = False) -> Any:
    path = root / name
    if not path.is_file():
        if required:
            raise SourceUnreadable(f"the checkpoint has no {name}: a huggingface checkpoint is a directory with "
                                   "config.json, *.safetensors and the tokenizer files")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceUnreadable(f"{name} is not JSON: {exc}") from None
    if required and not isinstance(data, dict):
        raise SourceUnreadable(f"{name} is not a JSON object")
    return data


def safetensors_header(path: Path, name: str) -> dict[str, dict[str, Any]]:
    """The tensors a safetensors file declares, after checking the header against the file: the header's length
    fits the file, every tensor's byte range is its shape times its dtype, the ranges tile the data exactly."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsCorrupt(f"{name} is {size} bytes: too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise WeightsCorrupt(f"{name}'s header says it is {length} bytes long, and the file has {size - 8} "
                                 "bytes after the length field: truncated or not safetensors")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsCorrupt(f"{name}'s header is not JSON: not a safetensors file") from None
    if not isinstance(header, dict):
        raise WeightsCorrupt(f"{name}'s header is not a JSON object")
    header.pop("__metadata__", None)
    data = size - 8 - length
    ranges = []
    for tensor, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = math.prod(shape) * SAFETENSORS_BYTES[dtype]
            assert all(isinstance(d, int) and d >= 0 for d in shape) and isinstance(begin, int)
        except (KeyError, TypeError, ValueError, AssertionError):
            raise WeightsCorrupt(f"{name}: tensor {tensor!r} has no valid dtype, shape and data_offsets") from None
        if not 0 <= begin <= end or end - begin != count:
            raise WeightsCorrupt(f"{name}: tensor {tensor!r} is {dtype} {shape} ({count} bytes) and its offsets "
                                 f"[{begin}, {end}) hold {end - begin}")
        ranges.append((begin, end, tensor))
    ranges.sort()
    at = 0
    for begin, end, tensor in ranges:
        if begin != at:
            raise WeightsCorrupt(f"{name}: tensor {tensor!r} starts at byte {begin} of the data, expected {at}: "
                                 "tensors overlap or leave a gap")
        at = end
    if at != data:
        raise WeightsCorrupt(f"{name}: the header accounts for {at} bytes of data and the file holds {data}: "
                             "truncated, or bytes appended")
    return header


def _check_index(root: Path, tensors: dict[str, set[str]]) -> None:
    index = _json(root, INDEX)
    if index is None:
        if len(tensors) > 1:
            raise WeightsCorrupt(f"the checkpoint has {len(tensors)} safetensors files and no {INDEX} saying which "
                                 "tensor is where")
        return
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsCorrupt(f"{INDEX} has no weight_map")
    for tensor, shard in weight_map.items():
        if shard not in tensors:
            raise WeightsCorrupt(f"{INDEX} puts {tensor!r} in {shard!r}, which is not a safetensors file of the "
                                 "checkpoint")
        if tensor not in tensors[shard]:
            raise WeightsCorrupt(f"{INDEX} puts {tensor!r} in {shard}, whose header has no such tensor")


def load_tokenizer(root: Path) -> Any:
    """The checkpoint's tokenizer through transformers, never with remote code; TokenizerUnusable if it fails."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(root), trust_remote_code=False, local_files_only=True)
    except Exception as exc:
        raise TokenizerUnusable(f"the checkpoint's tokenizer does not load: {type(exc).__name__}: "
                                f"{str(exc)[:500]}") from None
