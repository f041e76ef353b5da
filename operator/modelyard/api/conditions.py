"""Condition types and reasons: the vocabulary of `status.conditions`, kept in one place."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ConditionType(StrEnum):
    READY = "Ready"
    """The revision the spec asks for serves all traffic with every replica ready."""
    CONVERTED = "Converted"
    """With spec.conversion: the latest revision's model was converted (the message names the artifact)."""
    VALIDATED = "Validated"
    """With spec.conversion: the converted model computes what the source computes (the message has the numbers)."""
    PROGRESSING = "Progressing"
    """With rollout.strategy canary: where the canary rollout stands; False once a canary was rolled back."""
    RECONCILING = "Reconciling"
    """kstatus: present (True) while the operator works towards the spec (modelyard.status.kstatus)."""
    STALLED = "Stalled"
    """kstatus: present (True) when the spec cannot be served without a change by a person."""


class Reason(StrEnum):
    # Ready=True
    AVAILABLE = "Available"
    SCALED_TO_ZERO = "ScaledToZero"
    """spec.scaling with minReplicas 0: the serving revision is idle and runs no pod."""
    # Ready=False: rollout in progress
    PROGRESSING = "Progressing"
    # Ready=False: read from the child objects
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    ERR_IMAGE_PULL = "ErrImagePull"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CONTAINER_TERMINATED = "ContainerTerminated"
    """A container of a pod that is not ready has exited (the message has its exit code and reason)."""
    CONTAINER_RESTARTED = "ContainerRestarted"
    """A container restarted after an exit and is not ready again yet."""
    WEIGHTS_UNVERIFIED = "WeightsUnverified"
    """An LLM pod's init container found the repository or the staged weights other than staged: Triton not started."""
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    # Ready=False: the operator cannot act on the spec
    SOURCE_UNSUPPORTED = "SourceUnsupported"
    INVALID_SPEC = "InvalidSpec"
    APPLY_REJECTED = "ApplyRejected"
    RECONCILE_FAILED = "ReconcileFailed"
    NAME_CONFLICT = "NameConflict"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_INCOMPLETE = "SecretIncomplete"
    PROMETHEUS_NOT_CONFIGURED = "PrometheusNotConfigured"
    # Scaling events
    SCALED_FROM_ZERO = "ScaledFromZero"
    # The conversion stage
    CONVERTING = "Converting"
    CONVERTED = "Converted"
    VALIDATED = "Validated"
    VALIDATION_FAILED = "ValidationFailed"
    VALIDATION_INCONCLUSIVE = "ValidationInconclusive"
    CONVERSION_UNSUPPORTED = "ConversionUnsupported"
    SOURCE_REFUSED = "SourceRefused"
    MODULE_NOT_ALLOWED = "ModuleNotAllowed"
    PICKLED_WEIGHTS = "PickledWeights"
    CUSTOM_CODE = "CustomCode"
    TOKENIZER_UNUSABLE = "TokenizerUnusable"
    ARCHITECTURE_UNSUPPORTED = "ArchitectureUnsupported"
    WEIGHTS_CORRUPT = "WeightsCorrupt"
    """conversion.modelClass or kerasCustomObjects names code the operator's administrator does not allow."""
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    SOURCE_UNREADABLE = "SourceUnreadable"
    CONVERSION_FAILED = "ConversionFailed"
    # Progressing (canary rollouts); the Canary* reasons are modelyard.rollout.canary's
    CANARY_PROGRESSING = "CanaryProgressing"
    CANARY_WAITING = "CanaryWaiting"
    CANARY_PAUSED = "CanaryPaused"
    CANARY_PROMOTED = "CanaryPromoted"
    CANARY_ROLLED_BACK = "CanaryRolledBack"
    ROLLOUT_COMPLETE = "RolloutComplete"


WAITING_REASONS: frozenset[str] = frozenset(
    {
        Reason.IMAGE_PULL_BACK_OFF,
        Reason.ERR_IMAGE_PULL,
        Reason.CRASH_LOOP_BACK_OFF,
        Reason.CREATE_CONTAINER_CONFIG_ERROR,
    }
)
"""Container waiting reasons that are surfaced as the Ready reason as they are."""


class Condition(BaseModel):
    """The metav1.Condition shape."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    type: str = Field(description="Condition type, such as Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.", max_length=1024)
    message: str = Field(default="", description="What happened, for a person.", max_length=32768)
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="The generation this condition describes.")
