"""spec.rollout, spec.traffic and status.rollout: canary rollouts through the Gateway API, with automated analysis.

The decision they drive is modelyard.rollout.canary.next_step, a pure function tested as a table; the reconciler
(modelyard.reconcile.rollout) observes, measures, applies the weight and records the state in status.rollout.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from modelyard.api.v1alpha1.common import Observed, Spec, cel

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(duration: str) -> float:
    """A Kubernetes-style duration ("90s", "1m30s", "250ms") in seconds."""
    if not re.fullmatch(DURATION_PATTERN, duration):
        raise ValueError(f"{duration!r} is not a duration such as 30s, 2m or 1h30m")
    return sum(float(n) * _UNITS[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)(ms|s|m|h)", duration))


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]


class Pause(Spec):
    duration: Duration | None = Field(
        default=None, description="How long to hold the current weight; without it, until a person resumes.")


class Step(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.setWeight) != has(self.pause)", "a step is either setWeight or pause, not both")]})

    set_weight: int | None = Field(default=None, ge=1, le=100,
                                   description="Percent of the gateway's requests that go to the canary.")
    pause: Pause | None = Field(default=None, description="Hold the current weight.")

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if (self.set_weight is None) == (self.pause is None):
            raise ValueError("a step is either setWeight or pause")
        return self


def _defaults(model: type[Spec]) -> dict[str, Any]:
    """A section's defaults in full: the API server checks a default against the section's CEL rules as it is."""
    return model().model_dump(mode="json", by_alias=True, exclude_none=True)


def _default_steps() -> list[Step]:
    return [Step(set_weight=10), Step(set_weight=25), Step(set_weight=50)]


class Latency(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.maxMs) || has(self.maxRatioToStable)", "a latency check needs maxMs, maxRatioToStable or both")]})

    quantile: float = Field(default=0.99, gt=0, lt=1, description="Which latency quantile is checked.")
    max_ms: float | None = Field(default=None, gt=0, description="The canary's quantile may not exceed this.")
    max_ratio_to_stable: float | None = Field(
        default=None, gt=0, description="The canary's quantile may not exceed the stable revision's times this.")


class LLMAnalysis(Spec):
    """For serving.runtime vllm: checks on the engine's own measurements of the canary's generations."""

    time_to_first_token: Latency | None = Field(
        default=None, description="From arrival to the first generated token (vllm:time_to_first_token_seconds).")
    time_per_output_token: Latency | None = Field(
        default=None, description="Between generated tokens (vllm:time_per_output_token_seconds).")
    min_generation_success_rate: float | None = Field(
        default=None, ge=0, le=100,
        description="Percent of the canary's generations that Triton completes without an error. A stream that "
        "fails after its first piece is HTTP 200 to the gateway; Triton counts it failed.")


class CustomMetric(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.min) || has(self.max)", "a custom check needs min, max or both")]})

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="Named in conditions and events.")
    query: str = Field(min_length=1, max_length=4096,
                       description="PromQL returning one number; $canary and $stable stand for the revisions.")
    min: float | None = Field(default=None, description="The value must be at least this.")
    max: float | None = Field(default=None, description="The value must be at most this.")


class Analysis(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("duration(self.interval) >= duration('5s')",
            "analysis.interval must be at least 5s: a rate over fewer than two scrapes has no data")]})

    interval: Duration = Field(default="30s", description="How often the canary is measured.")
    failure_limit: int = Field(default=2, ge=1, le=100,
                               description="Failed checks (over the whole rollout) that roll the canary back.")
    min_requests: int = Field(
        default=20, ge=1, description="Canary requests an interval needs before it is judged; fewer is "
        "inconclusive: the rollout waits, it does not pass.")
    min_success_rate: float | None = Field(
        default=99.0, ge=0, le=100, description="Percent of the canary's requests that must succeed.")
    latency: Latency | None = Field(default=None, description="Latency checks on the canary's requests.")
    llm: LLMAnalysis | None = Field(
        default=None, description="For serving.runtime vllm: time to first token, time per output token and "
        "failed generations, from the engine's and Triton's metrics of the canary's pods.")
    custom: list[CustomMetric] | None = Field(default=None, max_length=16, description="Your own checks.")


class Canary(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.steps.exists(s, has(s.setWeight))",
            "canary.steps needs at least one setWeight step: the canary is measured only while it gets traffic")]})

    steps: list[Step] = Field(default_factory=_default_steps, min_length=1, max_length=32,
                              description="setWeight and pause steps; promotion follows the last one. "
                              "Default: setWeight 10, 25, 50.",
                              json_schema_extra={"default": [{"setWeight": 10}, {"setWeight": 25}, {"setWeight": 50}]})
    analysis: Analysis = Field(default_factory=Analysis, description="What the canary is measured on.",
                               json_schema_extra={"default": _defaults(Analysis)})


class Rollout(Spec):
    strategy: Literal["blueGreen", "canary"] = Field(default="blueGreen",
                          description="blueGreen: switch when the new revision is ready. canary: shift traffic in "
                          "steps through the gateway, measured at each.")
    paused: bool = Field(default=False, description="Hold the rollout where it is (analysis goes on).")
    canary: Canary = Field(default_factory=Canary, description="Steps and analysis of the canary strategy.",
                           json_schema_extra={"default": _defaults(Canary)})


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""Gateway API's Hostname: a DNS name, lower case, optionally with one leading '*.' label."""


class ParentReference(Spec):
    name: str = Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN, description="The Gateway's name.")
    namespace: str | None = Field(default=None, max_length=63, pattern=_DNS_LABEL,
                                  description="The Gateway's namespace; the ModelDeployment's when empty.")
    section_name: str | None = Field(default=None, max_length=253, pattern=_DNS_SUBDOMAIN,
                                     description="One listener of the Gateway.")


class GatewayTraffic(Spec):
    parent_refs: list[ParentReference] = Field(min_length=1, max_length=32,
                                               description="The Gateway(s) the model's HTTPRoute attaches to.")
    hostnames: list[Annotated[str, Field(min_length=1, max_length=253, pattern=HOSTNAME)]] | None = Field(
        default=None, max_length=16, description="Hostnames the route serves (DNS names; '*.' allowed first).")
    path_prefix: str = Field(
        default="/", pattern="^/", max_length=1024,
        description="The path prefix the route matches (Triton's /v2/... lies below it).",
        json_schema_extra={"x-kubernetes-validations": [cel(
            "!self.matches('(//|/[.][.]?(/|$)|%2[fF]|%5[cC]|#|[[:space:][:cntrl:]])')",
            "traffic.gateway.pathPrefix may not contain '//', '.' or '..' segments, encoded slashes, '#', spaces or "
            "control characters (as the Gateway API refuses)")]})


class Traffic(Spec):
    gateway: GatewayTraffic = Field(description="Serve the model through a Gateway API Gateway (HTTPRoute).")


# --- status ------------------------------------------------------------------------------------------------------


class CheckResult(Observed):
    name: str
    value: float | None = None
    """None: no data."""
    threshold: str = ""
    """As a person reads it: '>= 99%', '<= 200 ms'."""
    passed: bool | None = None
    """None: inconclusive."""


class Measurement(Observed):
    """One analysis interval of the canary."""

    at: float
    """When it was taken (epoch seconds)."""
    requests: int = 0
    checks: list[CheckResult] = Field(default_factory=list)


class RolloutStatus(Observed):
    """Where a canary rollout stands: enough to resume exactly there after an operator restart."""

    canary: str = Field(description="The canary revision.")
    step: int = Field(default=0, description="Index of the current step in spec.rollout.canary.steps.")
    weight: int = Field(default=0, ge=0, le=100, description="Percent of the gateway's requests the canary gets.")
    step_started_at: float = Field(default=0, description="When the current step began (epoch seconds).")
    passed_at_step: int = Field(default=0, description="Passed analyses at the current step.")
    failed_checks: int = Field(default=0, description="Failed analyses over the whole rollout.")
    last_measurement: Measurement | None = Field(default=None, description="The last analysis and its numbers.")
    phase: str = Field(default="Progressing", description="Progressing, Paused, Promoted or RolledBack.")
    message: str = Field(default="", description="What the rollout waits for or why it ended, with numbers.")
    stable: str | None = Field(default=None, description="The revision that served when the canary began.")
    finished_at: float | None = Field(
        default=None, description="When the canary was promoted or rolled back (epoch seconds).")
