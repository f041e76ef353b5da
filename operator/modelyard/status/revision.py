"""Read a revision's state off its Deployment and pods: is it available, and if not, why not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelyard.api.conditions import WAITING_REASONS, Reason
from modelyard.api.names import WEIGHTS_CONTAINER
from modelyard.redact import redact_text

Obj = dict[str, Any]


@dataclass(frozen=True)
class RevisionState:
    revision: str
    replicas: int
    ready_replicas: int
    available: bool
    reason: str
    message: str


def _deployment_condition(deployment: Obj, type_: str) -> Obj | None:
    conditions: list[Obj] = deployment.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == type_), None)


def pending_problem(pods: list[Obj]) -> tuple[str, str] | None:
    """Why a pod is not running yet: the scheduler found no node, or a container is stuck waiting (image pull,
    configuration). The scheduler's or the container's own words."""
    for pod in pods:
        for cond in pod.get("status", {}).get("conditions", []):
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == (
                Reason.UNSCHEDULABLE
            ):
                return Reason.UNSCHEDULABLE, cond.get("message", "the scheduler found no node for the pod")
    for pod in pods:
        statuses = pod.get("status", {}).get("containerStatuses", []) + pod.get("status", {}).get(
            "initContainerStatuses", []
        )
        for cs in statuses:
            waiting = cs.get("state", {}).get("waiting") or {}
            if waiting.get("reason") in WAITING_REASONS:
                detail = waiting.get("message") or waiting["reason"]
                return waiting["reason"], f"container {cs.get('name')}: {detail}"
    return None


def _pod_problem(pods: list[Obj]) -> tuple[str, str] | None:
    """The first reason a pod of the revision is not running: its staged weights refused, pending (above), or a
    container that exited."""
    for pod in pods:
        for cs in pod.get("status", {}).get("initContainerStatuses", []):
            state = cs.get("state", {})
            ended = state.get("terminated") or cs.get("lastState", {}).get("terminated")
            if cs.get("name") == WEIGHTS_CONTAINER and ended and ended.get("exitCode") != 0:
                return Reason.WEIGHTS_UNVERIFIED, (
                    f"pod {pod.get('metadata', {}).get('name', '')}: {_weights_words(str(ended.get('message', '')))}")
    pending = pending_problem(pods)
    if pending:
        return pending
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []):
            if cs.get("ready"):
                continue
            name = pod.get("metadata", {}).get("name", "")
            terminated = cs.get("state", {}).get("terminated")
            if terminated:
                return Reason.CONTAINER_TERMINATED, (
                    f"container {cs.get('name')} of pod {name} {_exit(terminated)}")
            last = cs.get("lastState", {}).get("terminated")
            if last and "running" in cs.get("state", {}):
                return Reason.CONTAINER_RESTARTED, (
                    f"container {cs.get('name')} of pod {name} restarted ({cs.get('restartCount', 0)} restarts) "
                    f"after it {_exit(last)}; not ready yet")
    return None


def _weights_words(message: str) -> str:
    """The init container's refusal (its JSON result), or the tail of its log when it did not get to write one."""
    try:
        result = json.loads(message)
    except ValueError:
        result = None
    if isinstance(result, dict) and result.get("ok") is False:
        return redact_text(str(result.get("message", ""))[:1000])
    return redact_text(f"the staged weights were not verified: {message.strip()[-300:] or 'its container failed'}")


def _exit(terminated: Obj) -> str:
    words = f"exited with code {terminated.get('exitCode')} ({terminated.get('reason', 'Error')})"
    if terminated.get("finishedAt"):
        words += f" at {terminated['finishedAt']}"
    message = str(terminated.get("message", "")).strip()
    return f"{words}: {message[-300:]}" if message else words


def observe_revision(revision: str, deployment: Obj | None, pods: list[Obj], desired_replicas: int) -> RevisionState:
    """What the Deployment and pods of one revision say about it."""
    if deployment is None:
        return RevisionState(revision, desired_replicas, 0, False, Reason.PROGRESSING, "creating the Deployment")
    spec_replicas = int(deployment.get("spec", {}).get("replicas", desired_replicas))
    status = deployment.get("status", {})
    ready = int(status.get("readyReplicas", 0))
    fresh = int(status.get("observedGeneration", 0)) >= int(deployment["metadata"].get("generation", 1))
    available = (
        fresh
        and int(status.get("updatedReplicas", 0)) >= spec_replicas
        and int(status.get("availableReplicas", 0)) >= spec_replicas
        and ready >= spec_replicas
        and int(status.get("replicas", 0)) == spec_replicas
    )
    counts = f"{ready}/{spec_replicas} replicas ready"
    if spec_replicas == 0:
        # Scaled to zero (an autoscaler, or a rolled-back canary): nothing to wait for, whatever the status says yet.
        return RevisionState(revision, 0, ready, True, Reason.AVAILABLE, "scaled to 0 replicas")
    if available:
        return RevisionState(revision, spec_replicas, ready, True, Reason.AVAILABLE, counts)
    problem = _pod_problem(pods)
    progressing = _deployment_condition(deployment, "Progressing")
    if progressing and progressing.get("reason") == Reason.PROGRESS_DEADLINE_EXCEEDED:
        # The Deployment gave up waiting (its progressDeadlineSeconds): that ends a wait that could have healed on
        # its own (a pod that cannot be scheduled yet, an image that does not pull yet). The pod's problem stays in
        # the message.
        details = "; ".join(d for d in (counts, progressing.get("message", ""), problem[1] if problem else "") if d)
        return RevisionState(revision, spec_replicas, ready, False, Reason.PROGRESS_DEADLINE_EXCEEDED, details)
    if problem:
        return RevisionState(revision, spec_replicas, ready, False, problem[0], f"{counts}; {problem[1]}")
    return RevisionState(revision, spec_replicas, ready, False, Reason.PROGRESSING, counts)
