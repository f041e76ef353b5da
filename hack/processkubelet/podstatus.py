"""Container states -> the pod's status, as a kubelet reports it. Pure, so it is tested as a table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class ContainerView:
    name: str
    image: str
    state: Obj
    last_state: Obj
    ready: bool
    started: bool
    restart_count: int


def completed(c: ContainerView) -> bool:
    """An init container that ran to the end with exit code 0."""
    return c.state.get("terminated", {}).get("exitCode") == 0


def phase(containers: Sequence[ContainerView], restart_policy: str, init: Sequence[ContainerView] = ()) -> str:
    if not all(completed(c) for c in init):  # init containers run first, one after the other
        failed = any(c.state.get("terminated", {}).get("exitCode", 0) != 0 for c in init)
        return "Failed" if failed and restart_policy == "Never" else "Pending"
    states = [c.state for c in containers]
    if all("terminated" in s for s in states) and states:
        codes = [s["terminated"]["exitCode"] for s in states]
        if all(code == 0 for code in codes) and restart_policy in ("Never", "OnFailure"):
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
    if any("running" in s or "terminated" in s or c.restart_count for s, c in zip(states, containers, strict=True)):
        return "Running"
    return "Pending"


def _condition(previous: Sequence[Obj], type_: str, ok: bool, now: str, reason: str | None = None) -> Obj:
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else now
    out = {"type": type_, "status": status, "lastTransitionTime": since, "lastProbeTime": None}
    if reason and not ok:
        out["reason"] = reason
    return out


def _statuses(pod: Obj, containers: Sequence[ContainerView]) -> list[Obj]:
    return [
        {
            "name": c.name,
            "image": c.image,
            "imageID": f"process-kubelet://{c.image}",
            "containerID": f"process://{pod['metadata'].get('uid', '')}/{c.name}/{c.restart_count}",
            "state": c.state,
            "lastState": c.last_state,
            "ready": c.ready,
            "started": c.started,
            "restartCount": c.restart_count,
        }
        for c in containers
    ]


def pod_status(pod: Obj, containers: Sequence[ContainerView], pod_ip: str, host_ip: str, start_time: str,
               now: str, init: Sequence[ContainerView] = ()) -> Obj:
    """The pod's status for a strategic-merge patch (conditions merge by type: the scheduler's stay). `init`: the
    init containers, which run to completion, in order, before the containers start."""
    policy = pod["spec"].get("restartPolicy", "Always")
    ph = phase(containers, policy, init)
    initialized = all(completed(c) for c in init)
    previous = pod.get("status", {}).get("conditions", [])
    all_ready = bool(containers) and all(c.ready for c in containers) and ph == "Running"
    not_ready = "PodCompleted" if ph in ("Succeeded", "Failed") else "ContainersNotReady"
    sandbox = any(c.state.get("waiting", {}).get("reason") != "ContainerCreating" for c in [*init, *containers])
    out = {
        "phase": ph,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "qosClass": pod.get("status", {}).get("qosClass", "BestEffort"),
        "conditions": [
            _condition(previous, "PodReadyToStartContainers", sandbox, now),
            _condition(previous, "Initialized", initialized, now, "ContainersNotInitialized"),
            _condition(previous, "ContainersReady", all_ready, now, not_ready),
            _condition(previous, "Ready", all_ready, now, not_ready),
        ],
        "containerStatuses": _statuses(pod, containers),
    }
    if init:
        out["initContainerStatuses"] = _statuses(pod, init)
    return out
