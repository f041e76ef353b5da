"""`modelyard`: the command line. `modelyard crd` prints the CRD; `modelyard render -f md.yaml` prints the
child objects the operator would create for a manifest (like `helm template`)."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

import yaml
from pydantic import ValidationError

from modelyard import yamlio
from modelyard.api.crdgen import model_deployment_crd_yaml
from modelyard.api.names import revision_of
from modelyard.api.reference import api_reference_markdown
from modelyard.api.v1alpha1 import KIND, ModelDeployment
from modelyard.render.children import render_children
from modelyard.render.triton import UnservableSource
from modelyard.settings import Settings


def _load_manifests(path: str) -> list[dict[str, Any]]:
    with sys.stdin if path == "-" else open(path, encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    return [d for d in docs if d.get("kind") == KIND]


def render_manifest(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The children of one ModelDeployment manifest, as the operator would first apply them."""
    doc = dict(doc)
    meta = dict(doc.get("metadata") or {})
    meta.setdefault("namespace", "default")
    # A manifest on disk has no uid yet; a fixed placeholder keeps the output reproducible.
    meta.setdefault("uid", str(uuid.UUID(int=0)))
    doc["metadata"] = meta
    md = ModelDeployment.model_validate(doc)
    own = Settings.from_env()
    return render_children(md, revision_of(md.spec), own.converter(), own.prometheus_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelyard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("crd", help="print the ModelDeployment CustomResourceDefinition")
    sub.add_parser("docs", help="print the API reference (docs/api.md) in Markdown")
    render = sub.add_parser("render", help="print the child objects the operator creates for a manifest")
    render.add_argument("-f", "--filename", required=True, help="manifest file, or - for standard input")
    convert = sub.add_parser("convert", help="convert and validate a manifest's model locally (converter extra)")
    try:
        from modelyard.convert.main import add_arguments

        add_arguments(convert)
    except ImportError:  # without torch & co. the subcommand says what is missing when used
        convert.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "convert":
        try:
            from modelyard.convert.main import run_arguments
        except ImportError as exc:
            print(f"modelyard convert needs the converter extra: pip install 'modelyard[converter]' ({exc})",
                  file=sys.stderr)
            return 2
        return run_arguments(args)
    if args.command == "crd":
        sys.stdout.write(model_deployment_crd_yaml())
        return 0
    if args.command == "docs":
        sys.stdout.write(api_reference_markdown())
        return 0
    docs = _load_manifests(args.filename)
    if not docs:
        print(f"modelyard: no {KIND} in {args.filename}", file=sys.stderr)
        return 1
    out: list[dict[str, Any]] = []
    for doc in docs:
        name = (doc.get("metadata") or {}).get("name", "?")
        try:
            out.extend(render_manifest(doc))
        except ValidationError as exc:
            print(f"modelyard: {KIND} {name} is invalid:\n{exc}", file=sys.stderr)
            return 1
        except UnservableSource as exc:
            print(f"modelyard: {KIND} {name}: {exc}", file=sys.stderr)
            return 1
    sys.stdout.write(yamlio.dump_all(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
