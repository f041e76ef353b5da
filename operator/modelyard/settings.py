"""Operator settings, read once from the environment."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from modelyard import __version__
from modelyard.api.names import FIELD_MANAGER
from modelyard.codepolicy import DEFAULT_ALLOWED_MODULES
from modelyard.render.conversion import Converter

DEFAULT_CONVERTER_IMAGE = f"ghcr.io/modelyard/converter:{__version__}"
DEFAULT_CONVERTER = Converter(DEFAULT_CONVERTER_IMAGE)


@dataclass(frozen=True)
class Settings:
    field_manager: str = FIELD_MANAGER
    resync_seconds: float = 60.0
    """How often every ModelDeployment is reconciled even without an event (a no-op when nothing changed)."""
    kubeconfig: str | None = None
    metrics_port: int = 8080
    converter_image: str = DEFAULT_CONVERTER_IMAGE
    """Image of the conversion Jobs (runtime/converter/Dockerfile)."""
    converter_allowed_modules: tuple[str, ...] = DEFAULT_ALLOWED_MODULES
    """Modules of the converter image that conversion.modelClass and kerasCustomObjects may name."""
    converter_allowed_cidrs: tuple[str, ...] = ()
    """Non-public address ranges that http(s) model sources may reach (an in-cluster MinIO, say)."""
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
            converter_allowed_modules=_list(env.get("MODELYARD_CONVERTER_ALLOWED_MODULES"), DEFAULT_ALLOWED_MODULES),
            converter_allowed_cidrs=_cidrs(env.get("MODELYARD_CONVERTER_ALLOWED_CIDRS")),
            prometheus_url=env.get("MODELYARD_PROMETHEUS_URL") or None,
            drain_seconds=float(env.get("MODELYARD_DRAIN_SECONDS", "30")),
            workers=int(env.get("MODELYARD_WORKERS", "4")),
            leader_election=_flag(env.get("MODELYARD_LEADER_ELECTION", "false"), "MODELYARD_LEADER_ELECTION"),
            leader_election_namespace=env.get("MODELYARD_LEADER_ELECTION_NAMESPACE") or _own_namespace(),
            leader_election_id=env.get("MODELYARD_LEADER_ELECTION_ID", "modelyard-operator"),
        )


    def converter(self) -> Converter:
        """The conversion Jobs' image and what they are allowed."""
        return Converter(self.converter_image, self.converter_allowed_modules, self.converter_allowed_cidrs)


def _list(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated setting; unset: the default (set and empty: nothing)."""
    if value is None:
        return default
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _cidrs(value: str | None) -> tuple[str, ...]:
    """MODELYARD_CONVERTER_ALLOWED_CIDRS, each checked here: a typo stops the operator, not every conversion."""
    cidrs = _list(value, ())
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ValueError(f"MODELYARD_CONVERTER_ALLOWED_CIDRS: {cidr!r} is not an address range: {exc}") from exc
    return cidrs


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
