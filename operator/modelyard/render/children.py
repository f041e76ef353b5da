"""Every child a new revision gets, in the order the operator creates them: what `modelyard render` prints."""

from __future__ import annotations

from typing import Any

from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.render.conversion import render_conversion_job
from modelyard.render.triton import render_service, render_triton_deployment

KEY_PLACEHOLDER = "<key>"
"""Stands for the converted repository's key, which is known once the conversion Job has run."""


def render_children(md: ModelDeployment, revision: str, converter_image: str) -> list[dict[str, Any]]:
    if md.spec.conversion is None:
        return [render_triton_deployment(md, revision), render_service(md, revision)]
    return [
        render_conversion_job(md, revision, converter_image),
        render_triton_deployment(md, revision, converted=KEY_PLACEHOLDER),
        render_service(md, revision),
    ]
