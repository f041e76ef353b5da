"""The canary's traffic objects against golden files (and the real gateway in tests/integration/test_gateway.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from modelyard import yamlio
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.api.v1alpha1.rollout import Traffic
from modelyard.render.traffic import render_http_route, render_revision_service

from .test_render_golden import _check

ROOT = Path(__file__).resolve().parents[2]


def _model() -> ModelDeployment:
    doc = yaml.safe_load((ROOT / "examples" / "resnet-gpu.yaml").read_text())
    doc["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    return ModelDeployment.model_validate(doc)


TRAFFIC = Traffic.model_validate({"gateway": {
    "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "http"}],
    "hostnames": ["resnet.example.com"], "pathPrefix": "/"}})


def test_a_canary_at_25_percent() -> None:
    md = _model()
    objects = [render_revision_service(md, "1aa7a97de4"), render_revision_service(md, "b28f5967ad"),
               render_http_route(md, TRAFFIC, {"1aa7a97de4": 75, "b28f5967ad": 25})]
    _check("traffic-canary-25.yaml", yamlio.dump_all(objects))
    route = objects[2]
    assert [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]] == [
        ("resnet50-1aa7a97de4", 75), ("resnet50-b28f5967ad", 25)]
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert objects[1]["spec"]["selector"]["modelyard.dev/revision"] == "b28f5967ad"


def test_hostnames_are_optional_and_a_namespace_defaults_to_the_models() -> None:
    traffic = Traffic.model_validate({"gateway": {"parentRefs": [{"name": "local"}]}})
    route = render_http_route(_model(), traffic, {"1aa7a97de4": 100})
    assert "hostnames" not in route["spec"] and route["spec"]["parentRefs"] == [{"name": "local"}]
