"""The Secrets a spec names: they must exist and hold the keys their use needs, before anything is created.

Only key names are read into messages, never values: a missing or incomplete Secret is reported with its name, the
spec field that names it and the keys it lacks. The check runs on every reconcile, so creating or fixing the
Secret is noticed on the next one (the periodic resync at the latest).
"""

from __future__ import annotations

from modelyard.api.conditions import Reason
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.kube.client import SECRETS, Kube
from modelyard.reconcile.common import Stop

S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
"""What an s3:// source or store reads (AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL are optional)."""


def check_secrets(kube: Kube, md: ModelDeployment) -> None:
    """Raise Stop (SecretNotFound, SecretIncomplete) for the first named Secret that cannot serve its use."""
    refs: list[tuple[str, str, tuple[str, ...]]] = []
    model = md.spec.model
    if model.credentials_secret_ref is not None:
        keys = S3_KEYS if model.uri.startswith("s3://") else ()
        refs.append(("model.credentialsSecretRef", model.credentials_secret_ref.name, keys))
    conv = md.spec.conversion
    if conv is not None and conv.store_credentials_secret_ref is not None:
        refs.append(("conversion.storeCredentialsSecretRef", conv.store_credentials_secret_ref.name, S3_KEYS))
    ns = md.metadata.namespace
    for field, name, needed in refs:
        secret = kube.get(SECRETS, ns, name)
        if secret is None:
            wanted = f" with {' and '.join(needed)}" if needed else ""
            raise Stop(Reason.SECRET_NOT_FOUND, f"Secret {ns}/{name}, named by spec.{field}, does not exist: create "
                       f"it{wanted}; nothing of this revision is created until it exists")
        present = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
        missing = [k for k in needed if k not in present]
        if missing:
            raise Stop(Reason.SECRET_INCOMPLETE, f"Secret {ns}/{name}, named by spec.{field}, has no "
                       f"{', '.join(missing)} (it has: {', '.join(sorted(present)) or 'no keys'})")
