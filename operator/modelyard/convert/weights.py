"""An LLM's Triton pod checks what it is about to load: the init container `weights` (the converter image).

Before Triton starts, it verifies the model's repository under its key (every file against the repository's
manifest) and the staged weights that the repository's `model.json` names: their manifest must name the key
they are under, every file must have the sha256 the manifest gives, and those digests must hash to the digest in
the key (`weights/<digest>`, modelyard.convert.llm): the weights are addressed by their content, so no copy that
differs by a byte, and no rewritten manifest, passes as the staged weights.

From a pvc:// store it reads the claim (mounted read-only) in place. From an s3:// store it first fetches the
repository and the weights into the pod's volume (`--to`), then verifies that copy, which is what Triton reads:
nothing reaches Triton that was not verified.

Exit 0: verified. Exit 1: refused, and why, in the termination message (the operator's Available condition shows
it with reason WeightsUnverified). Nothing it prints names a credential.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from modelyard.convert.errors import SourceUnavailable
from modelyard.convert.store import MANIFEST, DirectoryStore, Store, open_store, verify
from modelyard.redact import redact_text

WEIGHTS = "weights"
WEIGHTS_KEY = re.compile(r"^weights/[0-9a-f]{32}$")
TERMINATION_LIMIT = 4096


class WeightsUnverified(Exception):
    """What the pod would load is not what was staged and gated: the message says what differs."""


def weights_digest(files: dict[str, str]) -> str:
    """The staged copy's name: a digest of every file's path and sha256."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:32]


def verify_weights(store: Store, key: str, manifest: dict[str, Any] | None = None) -> str | None:
    """None when the weights under `key` (weights/<digest>) are the content that digest names; else what differs."""
    if not WEIGHTS_KEY.match(key):
        return f"{key[:60]!r} is not a staged weights key (weights/ and 32 hex digits)"
    manifest = store.find(key) if manifest is None else manifest
    if manifest is None:
        return "there is no manifest: they were never staged there, or staging did not finish"
    files = manifest.get("files")
    digest = key.split("/", 1)[1]
    if not isinstance(files, dict) or not files or weights_digest(files) != digest:
        return f"their manifest's file digests do not hash to {digest}: it is not the manifest they were staged with"
    return verify(store, key, manifest)


def weights_key(model_json: dict[str, Any], served_root: str) -> str:
    """The weights key that model.json's "model" (and "tokenizer") names: <served_root>/weights/<digest>."""
    model, tokenizer = model_json.get("model"), model_json.get("tokenizer")
    if not isinstance(model, str) or tokenizer not in (None, model):
        raise WeightsUnverified("model.json names no weights, or a tokenizer apart from them")
    root = served_root.rstrip("/") + "/"
    if not model.startswith(root) or not WEIGHTS_KEY.match(model[len(root):]):
        raise WeightsUnverified(f"model.json names {model[:120]!r}, which is not a staged copy under {root}{WEIGHTS}/")
    if model_json.get("trust_remote_code") is not False or model_json.get("load_format") != "safetensors":
        raise WeightsUnverified("model.json does not say trust_remote_code false and load_format safetensors")
    return model[len(root):]


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(p in ("..", ".", "") for p in path.parts):
        raise WeightsUnverified(f"the store lists {name[:120]!r} under the key, which is not a file name under it")
    return path


def fetch(store: Store, key: str, to: Path) -> dict[str, Any]:
    """Copy the key's files and manifest from the store into `to`/<key>; return the manifest."""
    manifest = store.find(key)
    if manifest is None:
        raise WeightsUnverified(f"{key} has no manifest in the store: not staged there, or staging did not finish")
    base = to / key
    base.mkdir(parents=True, exist_ok=True)
    for name, chunks in store.files(key):
        path = base / _safe_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
    (base / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
    return manifest


def check(store: str, key: str, name: str, served_root: str, to: Path | None,
          endpoint: str | None = None) -> dict[str, Any]:
    """Verify (after fetching, with `to`) the repository under `key` and the weights its model.json names."""
    source = open_store(store, endpoint)
    local: Store = source
    if to is not None:
        fetch(source, key, to)
        local = DirectoryStore(to)
    manifest = local.find(key)
    if manifest is None:
        raise WeightsUnverified(f"the model repository {key} has no manifest: it was never published there")
    problem = verify(local, key, manifest)
    if problem:
        raise WeightsUnverified(f"the model repository {key} does not match its manifest: {problem}")
    model_json_path = (to if to is not None else Path(store)) / key / name / "1" / "model.json"
    try:
        model_json = json.loads(model_json_path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsUnverified(f"the repository's model.json cannot be read: {exc}") from exc
    wkey = weights_key(model_json if isinstance(model_json, dict) else {}, served_root)
    if to is not None:
        fetch(source, wkey, to)
    problem = verify_weights(local, wkey)
    if problem:
        raise WeightsUnverified(f"the staged weights under {wkey} are not what was staged and gated: {problem}. "
                                "Triton does not start on them; stage them again (docs/llm.md, \"Staged weights\")")
    files = local.find(wkey) or {}
    return {"ok": True, "repository": key, "weights": wkey, "files": len(files.get("files", {}))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelyard-weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="the store: a directory (the claim's mount) or s3://...")
    parser.add_argument("--store-endpoint", default=None, help="S3 endpoint of an s3:// store outside AWS")
    parser.add_argument("--key", required=True, help="the model repository's key in the store")
    parser.add_argument("--name", required=True, help="the model's name in the repository")
    parser.add_argument("--served-root", required=True,
                        help="where model.json's paths start (the store as Triton sees it)")
    parser.add_argument("--to", type=Path, default=None, help="fetch into this directory first (an s3:// store)")
    parser.add_argument("--termination-log", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        result = check(args.store, args.key, args.name, args.served_root, args.to, args.store_endpoint)
        code = 0
    except (WeightsUnverified, SourceUnavailable) as exc:
        result = {"ok": False, "reason": "WeightsUnverified", "message": redact_text(str(exc))}
        code = 1
    text = json.dumps(result, separators=(",", ":"))
    print(text, flush=True)
    if args.termination_log is not None:
        args.termination_log.write_text(text[:TERMINATION_LIMIT])
    return code


if __name__ == "__main__":
    sys.exit(main())
