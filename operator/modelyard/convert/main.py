"""Run one conversion from a ModelDeployment manifest: `modelyard convert` and the converter container.

The converter container runs `python -m modelyard.convert.main -f /etc/modelyard/request.yaml --store DIR
--termination-log /dev/termination-log`: the result goes to the container's termination message as compact
JSON (Kubernetes keeps 4 KiB of it), which is how the operator reads it back.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelyard.api.v1alpha1 import KIND, ModelDeployment
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ConversionError
from modelyard.convert.pipeline import Request, convert
from modelyard.convert.sources import PVC_MOUNT

TERMINATION_LIMIT = 4096


def request_from_manifest(doc: dict[str, Any], flavour: str = "native") -> Request:
    """A ModelDeployment manifest (with an optional spec.conversion section) -> a conversion request."""
    doc = json.loads(json.dumps(doc))
    conversion = Conversion.model_validate(doc.get("spec", {}).pop("conversion", None) or {})
    doc.setdefault("metadata", {}).setdefault("namespace", "default")
    md = ModelDeployment.model_validate(doc)
    return Request(md.metadata.name, md.spec.model, conversion, md.spec.serving, flavour=flavour)


def result_message(manifest: dict[str, Any] | None, error: ConversionError | None) -> dict[str, Any]:
    """The compact result: what the Converted and Validated conditions need, within the termination limit."""
    if error is not None:
        return {"ok": False, "reason": error.reason, "message": error.message[:3000]}
    assert manifest is not None
    v = manifest.get("validation", {})
    return {
        "ok": True,
        "key": manifest["key"],
        "reused": manifest.get("reused", False),
        "artifact": manifest["artifact"],
        "validation": {k: v.get(k) for k in ("samples", "max_abs_error", "max_rel_error", "top1_agreement",
                                             "atol", "atol_spread", "rtol", "skipped", "sparsity") if k in v},
        **({"int8": {"keptFloat": len(i8["keptFloat"]), "quantized": len(i8["quantizedNodes"]),
                     "sizeRatio": i8["sizeRatio"]}} if (i8 := manifest.get("int8")) else {}),
    }


def run(manifest_path: str | None, store: Path | str, flavour: str, termination_log: Path | None,
        manifest_json: str | None = None, source_root: Path = PVC_MOUNT, store_endpoint: str | None = None) -> int:
    if manifest_json is not None:
        docs = [json.loads(manifest_json)]
    else:
        with sys.stdin if manifest_path == "-" else open(str(manifest_path), encoding="utf-8") as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d and d.get("kind") == KIND]
    if len(docs) != 1:
        print(f"modelyard convert: expected one {KIND} in {manifest_path}, found {len(docs)}", file=sys.stderr)
        return 2
    try:
        request = request_from_manifest(docs[0], flavour)
    except ValidationError as exc:
        print(f"modelyard convert: the manifest is invalid:\n{exc}", file=sys.stderr)
        if termination_log is not None:
            result = {"ok": False, "reason": "InvalidRequest", "message": str(exc)[:3000]}
            termination_log.write_text(json.dumps(result, separators=(",", ":")))
        return 2
    manifest, error = None, None
    try:
        manifest = convert(request, store, source_root=source_root, store_endpoint=store_endpoint)
    except ConversionError as exc:
        error = exc
    except Exception as exc:  # a failure no reason maps yet: still a reason and a message, not a bare traceback
        traceback.print_exc(file=sys.stderr)  # the pod's log keeps the details for whoever debugs it
        error = ConversionError(f"the converter failed unexpectedly: {type(exc).__name__}: {exc}"[:2000]
                                + " (the conversion pod's log has the details)")
    result = result_message(manifest, error)
    text = json.dumps(result, separators=(",", ":"))
    if termination_log is not None:
        termination_log.write_text(text[:TERMINATION_LIMIT])
    print(json.dumps(manifest if manifest else result, indent=2, sort_keys=True))
    if error is not None:
        print(f"modelyard convert: {error.reason}: {error.message}", file=sys.stderr)
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--filename", help="ModelDeployment manifest, or - for standard input")
    source.add_argument("--manifest-json", help="the ModelDeployment as JSON (how the conversion Job passes it)")
    parser.add_argument("--source-root", type=Path, default=PVC_MOUNT,
                        help="where a pvc:// source's claim is mounted (default %(default)s)")
    parser.add_argument("--out", "--store", dest="store", required=True,
                        help="repository store, a directory or s3://bucket/prefix: the result lands in STORE/<key>/")
    parser.add_argument("--store-endpoint", help="S3 endpoint of an s3:// store outside AWS")
    parser.add_argument("--flavour", choices=["native", "python"], default="native",
                        help="python: serve ONNX through Triton's python backend (CPU Triton without onnxruntime)")
    parser.add_argument("--termination-log", type=Path, default=None, help="write the compact result here too")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelyard-convert", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.filename, args.store, args.flavour, args.termination_log, args.manifest_json, args.source_root,
               args.store_endpoint)


if __name__ == "__main__":
    sys.exit(main())
