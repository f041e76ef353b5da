"""Operator settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelyard import __version__
from modelyard.api.names import FIELD_MANAGER

DEFAULT_CONVERTER_IMAGE = f"ghcr.io/modelyard/converter:{__version__}"


@dataclass(frozen=True)
class Settings:
    field_manager: str = FIELD_MANAGER
    resync_seconds: float = 60.0
    """How often every ModelDeployment is reconciled even without an event (a no-op when nothing changed)."""
    kubeconfig: str | None = None
    metrics_port: int = 8080
    converter_image: str = DEFAULT_CONVERTER_IMAGE
    """Image of the conversion Jobs (runtime/converter/Dockerfile)."""
    prometheus_url: str | None = None
    """Prometheus that canary analysis asks; without it a canary waits, reported as not measurable."""
    drain_seconds: float = 30.0
    """After a promotion, how long the old revision stays behind the route at weight 0 before it is removed."""
    workers: int = 4
    """Reconciles that run at once, across models (one at a time for any one model)."""
    leader_election: bool = False
    """Reconcile only while holding the Lease (run several replicas); off: this process always reconciles."""
    leader_election_namespace: str = "default"
    """Where the Lease is: the operator's own namespace."""
    leader_election_id: str = "modelyard-operator"
    """The Lease's name: replicas that share it share the work (one at a time)."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            field_manager=env.get("MODELYARD_FIELD_MANAGER", FIELD_MANAGER),
            resync_seconds=float(env.get("MODELYARD_RESYNC_SECONDS", "60")),
            kubeconfig=env.get("KUBECONFIG") or None,
            metrics_port=int(env.get("MODELYARD_METRICS_PORT", "8080")),
            converter_image=env.get("MODELYARD_CONVERTER_IMAGE", DEFAULT_CONVERTER_IMAGE),
            prometheus_url=env.get("MODELYARD_PROMETHEUS_URL") or None,
            drain_seconds=float(env.get("MODELYARD_DRAIN_SECONDS", "30")),
            workers=int(env.get("MODELYARD_WORKERS", "4")),
            leader_election=_flag(env.get("MODELYARD_LEADER_ELECTION", "false"), "MODELYARD_LEADER_ELECTION"),
            leader_election_namespace=env.get("MODELYARD_LEADER_ELECTION_NAMESPACE") or _own_namespace(),
            leader_election_id=env.get("MODELYARD_LEADER_ELECTION_ID", "modelyard-operator"),
        )


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _own_namespace() -> str:
    """The namespace the operator's pod runs in (its service account says), else `default`."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as fh:
            return fh.read().strip() or "default"
    except OSError:
        return "default"


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no", ""):
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")
