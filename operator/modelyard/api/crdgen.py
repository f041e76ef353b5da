"""Pydantic models -> CustomResourceDefinition (`modelyard crd`, `make crds`).

Pydantic writes JSON Schema (with $ref, anyOf for optionals, titles); a CRD wants a structural OpenAPI v3 schema
(everything inline, one type per node, Kubernetes extensions). `structural()` does that translation and nothing
else: descriptions, bounds, enums, defaults and CEL rules all come from the models.
"""

from __future__ import annotations

from typing import Any

from modelyard import yamlio
from modelyard.api.v1alpha1 import types as v1

_DROP = {"title", "additionalProperties", "$defs"}
_FIRST = ("description", "type")


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a $ref (or a single-element allOf of one), keeping the referring node's own keys."""
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**{k: v for k, v in node.items() if k != "allOf"}, **node["allOf"][0]}
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        rest = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **rest}
    return node


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translate one pydantic JSON Schema node into a structural CRD schema node."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        branches = [_resolve(b, defs) for b in node["anyOf"] if b.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        types = sorted(b.get("type", "") for b in branches)
        if types == ["integer", "string"]:
            # As controller-gen writes resource.Quantity: a string must match the string branch's pattern.
            pattern = next((b["pattern"] for b in branches if b.get("type") == "string" and "pattern" in b), None)
            node = {**rest, "x-kubernetes-int-or-string": True}
            if pattern is not None:
                node = {**node, "anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": pattern}
        elif len(branches) == 1:
            node = {**branches[0], **rest}
        else:
            raise ValueError(f"cannot express anyOf {types} in a structural schema")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020-12 (pydantic) writes the bound; OpenAPI v3.0 (CRDs) wants the bound plus a flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "default":
            if value is None:
                continue
            out["default"] = value
        elif key == "properties":
            out["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
        else:
            out[key] = value
    additional = node.get("additionalProperties")
    if additional is True or (node.get("type") == "object" and additional == {}):
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(additional, dict):
        out["additionalProperties"] = structural(additional, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    default = out.get("default")
    if isinstance(default, str | int | float | bool) and "description" in out and "default" not in (
            out["description"].lower()):
        # kubectl explain prints the description, not the schema's default: state it there too.
        shown = str(default).lower() if isinstance(default, bool) else default
        out["description"] = f"{out['description'].rstrip()} Default: {shown}."
    first = [k for k in _FIRST if k in out]
    return {**{k: out[k] for k in first}, **{k: v for k, v in out.items() if k not in first}}


def _schema_of(model: type[Any]) -> dict[str, Any]:
    raw: dict[str, Any] = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _ready(field: str) -> str:
    return f'.status.conditions[?(@.type=="Ready")].{field}'


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": _ready("status"), "description": "Ready condition status."},
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": _ready("reason"),
        "priority": 1,
        "description": "Why Ready is what it is.",
    },
    {
        "name": "Revision",
        "type": "string",
        "jsonPath": ".status.revisions.stable.name",
        "description": "The revision that serves traffic.",
    },
    {
        "name": "Latest",
        "type": "string",
        "jsonPath": ".status.revisions.latest.name",
        "priority": 1,
        "description": "The revision the spec asks for.",
    },
    {
        "name": "Replicas",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Ready pods of the serving revision.",
    },
    {
        "name": "Desired",
        "type": "integer",
        "jsonPath": ".status.replicas",
        "priority": 1,
        "description": "Pods the serving revision should have.",
    },
    {
        "name": "Range",
        "type": "string",
        "jsonPath": ".status.scaling.range",
        "description": "With spec.scaling: the autoscaler's minReplicas-maxReplicas.",
    },
    {
        "name": "Canary",
        "type": "string",
        "jsonPath": ".status.rollout.canary",
        "priority": 1,
        "description": "The canary revision of a canary rollout.",
    },
    {
        "name": "Weight",
        "type": "integer",
        "jsonPath": ".status.rollout.weight",
        "priority": 1,
        "description": "Percent of the gateway's requests the canary gets.",
    },
    {
        "name": "Rollout",
        "type": "string",
        "jsonPath": ".status.rollout.phase",
        "priority": 1,
        "description": "Progressing, Paused, Promoted or RolledBack.",
    },
    {"name": "URL", "type": "string", "jsonPath": ".status.url", "description": "In-cluster URL of Triton's HTTP API."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

NAME_RULES: list[dict[str, str]] = [
    {
        "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": "metadata.name must be a DNS label (lower case letters, digits and '-', starting with a letter): "
        "it names the model's Service",
    },
    {
        "rule": "self.metadata.name.size() <= 40",
        "message": "metadata.name must be at most 40 characters: child objects are named <name>-<revision>",
    },
]


def model_deployment_crd() -> dict[str, Any]:
    """The ModelDeployment CRD as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{v1.PLURAL}.{v1.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelyard"},
        },
        "spec": {
            "group": v1.GROUP,
            "names": {
                "kind": v1.KIND,
                "listKind": f"{v1.KIND}List",
                "plural": v1.PLURAL,
                "singular": v1.SINGULAR,
                "shortNames": [v1.SHORT_NAME],
                "categories": [v1.CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": v1.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "ModelDeployment serves a model on NVIDIA Triton Inference Server: the operator "
                                "runs Triton pods for the model, rolls new revisions out, and reports each stage "
                                "in status.conditions."
                            ),
                            "required": ["spec"],
                            "x-kubernetes-validations": NAME_RULES,
                            "properties": {
                                "apiVersion": {"type": "string", "description": "modelyard.dev/v1alpha1"},
                                "kind": {"type": "string", "description": "ModelDeployment"},
                                "metadata": {"type": "object"},
                                "spec": {
                                    **_schema_of(v1.ModelDeploymentSpec),
                                    "description": "What to serve and how.",
                                },
                                "status": {
                                    **_schema_of(v1.ModelDeploymentStatus),
                                    "description": "What the operator observed; written by the operator only.",
                                    # Before the operator's first word the object reads as in progress, not
                                    # Current: kstatus (Flux) compares observedGeneration with the generation.
                                    "default": {"observedGeneration": 0},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def model_deployment_crd_yaml() -> str:
    """The ModelDeployment CRD as the YAML committed under crds/."""
    header = "# Generated by `make crds` from operator/modelyard/api/v1alpha1/types.py. Do not edit by hand.\n"
    return header + yamlio.dump(model_deployment_crd())
