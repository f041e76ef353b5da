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

BYTE_SIZE_PATTERN = r"^[1-9][0-9]{0,12}(Ki|Mi|Gi|Ti)?$"
"""A size in bytes, with a binary suffix or none: 512Mi, 20Gi, 1048576."""
_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def byte_size(text: str) -> int:
    """A BYTE_SIZE_PATTERN size in bytes."""
    unit = text[-2:] if text[-2:] in _BINARY else ""
    return int(text[: len(text) - len(unit)]) * _BINARY.get(unit, 1)


class ResourceRequirements(Spec):
    requests: dict[str, Quantity] | None = Field(
        default=None, description="Resource requests, as on a container." + _QUANTITIES)
    limits: dict[str, Quantity] | None = Field(
        default=None, description="Resource limits, as on a container." + _QUANTITIES)


# --- affinity, typed as core/v1 types it (so a misspelt key is refused at kubectl apply, not by a child) --------

_OPERATOR_NODE = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
_OPERATOR_LABEL = Literal["In", "NotIn", "Exists", "DoesNotExist"]


class NodeSelectorRequirement(Spec):
    key: str = Field(description="The label key the selector applies to.", min_length=1, max_length=317)
    operator: _OPERATOR_NODE = Field(description="In, NotIn, Exists, DoesNotExist, Gt or Lt.")
    values: list[str] | None = Field(default=None, description="Values for In/NotIn (Gt/Lt: one integer).")


class NodeSelectorTerm(Spec):
    match_expressions: list[NodeSelectorRequirement] | None = Field(
        default=None, description="Requirements on node labels.")
    match_fields: list[NodeSelectorRequirement] | None = Field(
        default=None, description="Requirements on node fields (metadata.name).")


class NodeSelector(Spec):
    node_selector_terms: list[NodeSelectorTerm] = Field(description="Terms, ORed.")


class PreferredSchedulingTerm(Spec):
    weight: int = Field(ge=1, le=100, description="Weight of this preference, 1-100.")
    preference: NodeSelectorTerm = Field(description="The node selector term.")


class NodeAffinity(Spec):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the pods must run on.")
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = Field(
        default=None, description="Nodes the pods prefer.")


class LabelSelectorRequirement(Spec):
    key: str = Field(description="The label key.", min_length=1, max_length=317)
    operator: _OPERATOR_LABEL = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] | None = Field(default=None, description="Values for In/NotIn.")


class LabelSelector(Spec):
    match_labels: dict[str, str] | None = Field(default=None, description="Labels that must all match.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None, description="Requirements, ANDed.")


class PodAffinityTerm(Spec):
    label_selector: LabelSelector | None = Field(default=None, description="The pods this term is about.")
    namespaces: list[str] | None = Field(default=None, description="Namespaces of those pods (default: this one).")
    namespace_selector: LabelSelector | None = Field(default=None, description="Namespaces of those pods, by label.")
    topology_key: str = Field(min_length=1, max_length=317,
                              description="Node label whose value defines 'together' (kubernetes.io/hostname, ...).")
    match_label_keys: list[str] | None = Field(default=None, description="Pod label keys merged into the selector.")
    mismatch_label_keys: list[str] | None = Field(
        default=None, description="Pod label keys merged into the selector, negated.")


class WeightedPodAffinityTerm(Spec):
    weight: int = Field(ge=1, le=100, description="Weight of this preference, 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(Spec):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, description="Terms the pods must satisfy.")
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = Field(
        default=None, description="Terms the pods prefer.")


class Affinity(Spec):
    node_affinity: NodeAffinity | None = Field(default=None, description="Which nodes, by their labels.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Near which pods.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Away from which pods.")
