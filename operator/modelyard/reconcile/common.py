"""What every reconciler of a ModelDeployment's children shares: the counted writer, the stop, ownership."""

from __future__ import annotations

from typing import Any

from modelyard.api.names import LABEL_COMPONENT, LABEL_REVISION, selector_labels
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.kube.apply import ensure
from modelyard.kube.client import Kube, Obj, Resource


class Writer:
    """Applies what differs and deletes, counting each write (zero on an unchanged resync)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.count = 0

    def ensure(self, live: Obj | None, desired: Obj) -> Obj:
        result = ensure(self.kube, live, desired)
        if result is not live:
            self.count += 1
        return result

    def delete(self, res: Resource, namespace: str, name: str) -> None:
        self.kube.delete(res, namespace, name)
        self.count += 1


class Stop(Exception):
    """The reconcile cannot go on; the Ready condition says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def owned_by(obj: Obj, md: ModelDeployment) -> bool:
    refs: list[dict[str, Any]] = obj.get("metadata", {}).get("ownerReferences", [])
    return any(ref.get("uid") == md.metadata.uid for ref in refs)


def owned_children(kube: Kube, res: Resource, md: ModelDeployment, component: str) -> dict[str, Obj]:
    """This model's children of one kind and component that belong to a revision, by revision."""
    return {
        o["metadata"]["labels"][LABEL_REVISION]: o
        for o in kube.list_by_labels(res, md.metadata.namespace, {**selector_labels(md), LABEL_COMPONENT: component})
        if owned_by(o, md) and LABEL_REVISION in o["metadata"].get("labels", {})
    }
