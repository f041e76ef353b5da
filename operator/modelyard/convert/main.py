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
from modelyard.convert.policy import Policy, split_list
from modelyard.convert.sources import PVC_MOUNT
from modelyard.redact import redact_text, redact_value, secret_values

TERMINATION_LIMIT = 4096


def request_from_manifest(doc: dict[str, Any], flavour: str = "native", policy: Policy | None = None) -> Request:
    """A ModelDeployment manifest (with an optional spec.conversion section) -> a conversion request."""
    doc = json.loads(json.dumps(doc))
    conversion = Conversion.model_validate(doc.get("spec", {}).pop("conversion", None) or {})
    doc.setdefault("metadata", {}).setdefault("namespace", "default")
    md = ModelDeployment.model_validate(doc)
    return Request(md.metadata.name, md.spec.model, conversion, md.spec.serving, flavour=flavour,
                   policy=policy or Policy.from_env())


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
        **({"replaced": manifest["replaced"][:400]} if manifest.get("replaced") else {}),
        "artifact": manifest["artifact"],
        "validation": {k: v.get(k) for k in ("samples", "max_abs_error", "max_rel_error", "top1_agreement",
                                             "atol", "atol_spread", "rtol", "skipped", "sparsity") if k in v}
        | ({"fp16": True} if "arithmetic" in v else {})
        | ({"llm": {k: v for k, v in v["llm"].items() if k != "greedy"}} if "llm" in v else {}),
        **({"int8": {"keptFloat": len(i8["keptFloat"]), "quantized": len(i8["quantizedNodes"]),
                     "sizeRatio": i8["sizeRatio"]}} if (i8 := manifest.get("int8")) else {}),
    }


def run(manifest_path: str | None, store: Path | str, flavour: str, termination_log: Path | None,
        manifest_json: str | None = None, source_root: Path = PVC_MOUNT, store_endpoint: str | None = None,
        policy: Policy | None = None, served_store: str | None = None) -> int:
    """One conversion. Everything it writes (termination message, standard output and error) is redacted: no URL
    credentials, no query strings, no secret of its environment (modelyard.redact)."""
    secrets = secret_values()

    def clean(text: str) -> str:
        return redact_text(text, secrets)

    if manifest_json is not None:
        docs = [json.loads(manifest_json)]
    else:
        with sys.stdin if manifest_path == "-" else open(str(manifest_path), encoding="utf-8") as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d and d.get("kind") == KIND]
    if len(docs) != 1:
        print(f"modelyard convert: expected one {KIND} in {manifest_path}, found {len(docs)}", file=sys.stderr)
        return 2
    try:
        request = request_from_manifest(docs[0], flavour, policy)
    except ValidationError as exc:
        print(clean(f"modelyard convert: the manifest is invalid:\n{exc}"), file=sys.stderr)
        if termination_log is not None:
            result = {"ok": False, "reason": "InvalidRequest", "message": clean(str(exc))[:3000]}
            termination_log.write_text(json.dumps(result, separators=(",", ":")))
        return 2
    manifest, error = None, None
    try:
        manifest = convert(request, store, source_root=source_root, store_endpoint=store_endpoint,
                           served_store=served_store)
    except ConversionError as exc:
        error = exc
    except Exception as exc:  # a failure no reason maps yet: still a reason and a message, not a bare traceback
        print(clean(traceback.format_exc()), file=sys.stderr)  # the pod's log keeps the details for whoever debugs
        error = ConversionError(f"the converter failed unexpectedly: {type(exc).__name__}: {exc}"[:2000]
                                + " (the conversion pod's log has the details)")
    if error is not None:
        error.message = clean(error.message)
    result = result_message(manifest, error)
    result = redact_value(result, secrets)
    text = json.dumps(result, separators=(",", ":"))
    if termination_log is not None:
        termination_log.write_text(text[:TERMINATION_LIMIT])
    print(json.dumps(redact_value(manifest, secrets) if manifest else result, indent=2, sort_keys=True))
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
    parser.add_argument("--served-store", default=None,
                        help="the store as the Triton pods see it, for a huggingface checkpoint's model.json (the "
                        "Job passes /models/<path> for a pvc:// store); default: the store's own path")
    parser.add_argument("--flavour", choices=["native", "python"], default="native",
                        help="python: serve ONNX through Triton's python backend (CPU Triton without onnxruntime)")
    parser.add_argument("--termination-log", type=Path, default=None, help="write the compact result here too")
    parser.add_argument("--allowed-modules", default=None,
                        help="comma-separated modules that conversion.modelClass and kerasCustomObjects may name "
                        "(default: $MODELYARD_CONVERTER_ALLOWED_MODULES, else modelyard_plugins)")
    parser.add_argument("--allowed-cidrs", default=None,
                        help="comma-separated non-public address ranges http(s) sources may reach (default: "
                        "$MODELYARD_CONVERTER_ALLOWED_CIDRS, else none)")
    parser.add_argument("--confine", action="store_true",
                        help="plain paths (samples files) must lie inside --source-root (the conversion Job)")


def run_arguments(args: argparse.Namespace) -> int:
    """run() with the arguments add_arguments() parsed (the converter container, `modelyard convert`)."""
    base = Policy.from_env()
    policy = Policy(
        allowed_modules=split_list(args.allowed_modules) if args.allowed_modules is not None else base.allowed_modules,
        allowed_cidrs=split_list(args.allowed_cidrs) if args.allowed_cidrs is not None else base.allowed_cidrs,
        confine=args.confine,
    )
    return run(args.filename, args.store, args.flavour, args.termination_log, args.manifest_json, args.source_root,
               args.store_endpoint, policy, args.served_store)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelyard-convert", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_arguments(args)


if __name__ == "__main__":
    sys.exit(main())
