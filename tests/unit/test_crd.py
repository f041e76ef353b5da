"""The committed CRD is exactly what the models generate, and it is a structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.api.crdgen import model_deployment_crd, model_deployment_crd_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_the_models() -> None:
    committed = (ROOT / "crds" / "modelyard.dev_modeldeployments.yaml").read_text()
    assert committed == model_deployment_crd_yaml(), "crds/ drifted from the models: run `make crds` and commit"


def test_committed_api_reference_matches_the_models() -> None:
    from modelyard.api.reference import api_reference_markdown

    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == api_reference_markdown(), "docs/api.md drifted from the models: run `make crds` and commit"


def test_every_reason_is_documented() -> None:
    from modelyard.api.conditions import Reason
    from modelyard.api.reference import REASONS

    assert set(REASONS) == set(Reason)


def _walk(node: dict[str, Any], path: str = "") -> list[str]:
    problems = []
    for banned in ("$ref", "anyOf", "allOf", "oneOf", "title"):
        # The one anyOf a structural schema allows: x-kubernetes-int-or-string's own two types (as controller-gen
        # writes resource.Quantity), so that a pattern can apply to the string form.
        int_or_string = banned == "anyOf" and node.get("x-kubernetes-int-or-string") and node.get("anyOf") == [
            {"type": "integer"}, {"type": "string"}]
        if banned in node and not int_or_string:
            problems.append(f"{path}: {banned}")
    for flag in ("exclusiveMinimum", "exclusiveMaximum"):
        if flag in node and not isinstance(node[flag], bool):
            problems.append(f"{path}: {flag} must be a boolean in OpenAPI v3.0")
    typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if not typed:
        problems.append(f"{path}: no type")
    for name, sub in node.get("properties", {}).items():
        problems += _walk(sub, f"{path}.{name}")
        if "description" not in sub and path.startswith(".spec"):
            problems.append(f"{path}.{name}: no description (kubectl explain would print nothing)")
    if "items" in node:
        problems += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    return problems


def test_schema_is_structural_and_documented() -> None:
    schema = model_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []


def _rules(node: Any) -> list[dict[str, str]]:
    if isinstance(node, dict):
        return list(node.get("x-kubernetes-validations", [])) + [r for v in node.values() for r in _rules(v)]
    if isinstance(node, list):
        return [r for v in node for r in _rules(v)]
    return []


def test_cel_rules_carry_messages() -> None:
    rules = _rules(model_deployment_crd())
    assert len(rules) >= 8
    assert all(set(r) == {"rule", "message"} and len(r["message"]) > 30 for r in rules)
