"""Parts shared by the spec sections."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict


def cel(rule: str, message: str) -> JsonDict:
    """An x-kubernetes-validations entry: the API server answers `message` when `rule` is false."""
    return {"rule": rule, "message": message}


class Spec(BaseModel):
    """Spec parts: camelCase on the wire, unknown fields rejected (the API server prunes them; a local file not)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Observed(BaseModel):
    """Status and metadata parts: tolerant of fields that newer operators or the API server add."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class SecretReference(Spec):
    name: str = Field(
        description="Name of a Secret in the ModelDeployment's namespace.",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )


class Toleration(Spec):
    key: str | None = Field(default=None, description="Taint key to tolerate; empty with Exists tolerates all.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value, with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    toleration_seconds: int | None = Field(default=None, description="With NoExecute: how long the pod stays bound.")


QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
"""The Kubernetes quantity format (as controller-gen writes it for resource.Quantity): 500m, 2, 1.5, 4Gi, 1e3."""

Quantity = int | Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]

_QUANTITIES = " Values are Kubernetes quantities: 500m, 2, 4Gi."


class ResourceRequirements(Spec):
    requests: dict[str, Quantity] | None = Field(
        default=None, description="Resource requests, as on a container." + _QUANTITIES)
    limits: dict[str, Quantity] | None = Field(
        default=None, description="Resource limits, as on a container." + _QUANTITIES)
