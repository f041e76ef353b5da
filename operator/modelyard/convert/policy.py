"""What the operator's administrator allows a conversion: the code a spec may name, the addresses a source may be
fetched from, and whether plain paths are confined to the source's mount (in the conversion Job they are).

The operator passes these to every conversion Job as arguments (chart values converter.allowedModules and
converter.allowedSourceCIDRs); `modelyard convert` reads the same settings from its environment.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from modelyard.codepolicy import DEFAULT_ALLOWED_MODULES

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def split_list(value: str | None) -> tuple[str, ...]:
    """A comma-separated setting as its items."""
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@dataclass(frozen=True)
class Policy:
    allowed_modules: tuple[str, ...] = DEFAULT_ALLOWED_MODULES
    """Modules (and their submodules) that conversion.modelClass and kerasCustomObjects may name."""
    allowed_cidrs: tuple[str, ...] = ()
    """Addresses outside the public internet (loopback, link-local, private) that http(s) sources may reach, such
    as an in-cluster MinIO's Service range. Public addresses are always allowed."""
    confine: bool = False
    """Plain paths (a samples file, a local source) must resolve inside the source's mount: the conversion Job."""
    max_redirects: int = 3
    timeout_seconds: float = 30.0
    """Connect and per-read timeout of an http(s) download."""

    @classmethod
    def from_env(cls) -> Policy:
        env = os.environ
        modules = env.get("MODELYARD_CONVERTER_ALLOWED_MODULES")
        return cls(allowed_modules=split_list(modules) if modules is not None else DEFAULT_ALLOWED_MODULES,
                   allowed_cidrs=split_list(env.get("MODELYARD_CONVERTER_ALLOWED_CIDRS")))

    def networks(self) -> list[Network]:
        return [ipaddress.ip_network(c, strict=False) for c in self.allowed_cidrs]
