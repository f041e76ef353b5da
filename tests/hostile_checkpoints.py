"""Hostile Hugging Face checkpoints: each function spoils a copy of a good one in place and returns the reason the
staging Job must refuse it with (the converter tests and the LLM e2e share them)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path


def pickled(ckpt: Path) -> str:
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    return "PickledWeights"


def auto_map(ckpt: Path) -> str:
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (ckpt / "config.json").write_text(json.dumps(config))
    return "CustomCode"


def python_file(ckpt: Path) -> str:
    (ckpt / "modeling_evil.py").write_text("import os\nos.system('touch /tmp/pwned')\n")
    return "CustomCode"


def no_tokenizer(ckpt: Path) -> str:
    (ckpt / "tokenizer.json").unlink()
    return "TokenizerUnusable"


def broken_tokenizer(ckpt: Path) -> str:
    (ckpt / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    return "TokenizerUnusable"


def unknown_architecture(ckpt: Path) -> str:
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["MysteryForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(config))
    return "ArchitectureUnsupported"


def lying_header(ckpt: Path) -> str:
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 4]  # a tensor that claims 4 more bytes than its shape holds
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    return "WeightsCorrupt"


def truncated(ckpt: Path) -> str:
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    return "WeightsCorrupt"


def huge_header(ckpt: Path) -> str:
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    return "WeightsCorrupt"


def index_names_a_missing_shard(ckpt: Path) -> str:
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}))
    return "WeightsCorrupt"


def symlink_out(ckpt: Path) -> str:
    (ckpt / "tokenizer_config.json").unlink()
    os.symlink("/etc/passwd", ckpt / "tokenizer_config.json")
    return "SourceRefused"


HOSTILE = [pickled, auto_map, python_file, no_tokenizer, broken_tokenizer, unknown_architecture, lying_header,
           truncated, huge_header, index_names_a_missing_shard, symlink_out]
