"""Every child a new revision gets, in the order the operator creates them: what `modelyard render` prints."""

from __future__ import annotations

from typing import Any

from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.render.conversion import Converter, render_conversion_job
from modelyard.render.scaling import render_hpa, render_scaled_object
from modelyard.render.triton import render_service, render_triton_deployment

KEY_PLACEHOLDER = "<key>"
"""Stands for the converted repository's key, which is known once the conversion Job has run."""


PROMETHEUS_PLACEHOLDER = "<MODELYARD_PROMETHEUS_URL>"
"""Stands for the operator's Prometheus address where the renderer is not told it."""


def render_children(md: ModelDeployment, revision: str, converter: Converter,
                    prometheus_url: str | None = None) -> list[dict[str, Any]]:
    out = [render_conversion_job(md, revision, converter)] if md.spec.conversion is not None else []
    out += [render_triton_deployment(md, revision, converted=KEY_PLACEHOLDER if md.spec.conversion else None,
                                     weights_image=converter.image),
            render_service(md, revision)]
    if md.spec.scaling is not None:
        out.append(render_hpa(md, revision) if md.spec.scaling.engine == "hpa" else
                   render_scaled_object(md, revision, prometheus_url or PROMETHEUS_PLACEHOLDER, rolling_out=False))
    return out
