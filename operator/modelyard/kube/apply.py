"""Apply only what changed: a resync of an unchanged object makes no write call.

Server-side apply does the merging. This module only decides whether an apply is needed: the object is applied
when the configuration changed (its hash, recorded in an annotation, differs) or when a field this operator sets
was changed by someone else (drift). Fields other managers own are not compared.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.utils import parse_quantity

from modelyard.api.names import ANNOTATION_APPLIED, config_hash
from modelyard.kube.client import Kube, Obj


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    # The API server writes quantities in canonical form ("0.5" -> "500m"): compare them as numbers.
    if isinstance(want, str | int) and isinstance(have, str | int) and not isinstance(want, bool):
        try:
            return bool(parse_quantity(want) == parse_quantity(have))
        except (ValueError, TypeError):
            return False
    return False


def contains(live: Any, want: Any) -> bool:
    """True when every field of `want` has the same value in `live` (lists: same length, item by item)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(contains, live, want))
    return _same_scalar(want, live)


def with_config_hash(desired: Obj) -> Obj:
    """The object with its configuration hash recorded as an annotation."""
    out = copy.deepcopy(desired)
    annotations = out["metadata"].setdefault("annotations", {})
    annotations[ANNOTATION_APPLIED] = config_hash(desired)
    return out


def needs_apply(live: Obj | None, desired: Obj) -> bool:
    if live is None:
        return True
    stamped = with_config_hash(desired)
    recorded = live.get("metadata", {}).get("annotations", {}).get(ANNOTATION_APPLIED)
    return recorded != stamped["metadata"]["annotations"][ANNOTATION_APPLIED] or not contains(live, stamped)


def ensure(kube: Kube, live: Obj | None, desired: Obj) -> Obj:
    """Apply `desired` when `live` differs from it; return the object as it now is."""
    if not needs_apply(live, desired):
        assert live is not None
        return live
    return kube.apply(with_config_hash(desired))
