"""One redaction for every URL and message that leaves the converter or the operator.

A URL can carry credentials in two places: `user:password@` before the host, and the query string (a presigned S3
URL's signature, a token). Both go, wherever the URL stands: a source URI, a store endpoint, `AWS_ENDPOINT_URL`, or
a URL quoted inside a library's error message. Secrets known by value (the credentials the converter was given in
its environment) are blanked too, so a message that quotes one without a URL around it leaks nothing either.

Used by the converter for its termination message, manifest, standard output and error and its log, and by the
operator before a converter's message reaches a condition or an event (docs/security.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

HIDDEN = "***"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>()\[\]{}\\]+")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
"""`scheme://` and everything up to the last `@` of the authority: a password may hold any character but `/`."""

_TERMINAL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")
"""Terminal escape sequences (colours, cursor moves) and control characters other than newline and tab: a library's
coloured error text (torch prints bold advice) reaches a condition as plain words."""

SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
"""Environment variables whose values are credentials (also with the store's STORE_ prefix)."""


def redact_url(url: str) -> str:
    """The URL without `user:password@` and without its query string and fragment."""
    text = _USERINFO.sub(r"\1", url)
    try:
        parts = urlsplit(text)
    except ValueError:  # an unparseable authority: keep the scheme only
        return text.split("://", 1)[0] + "://" + HIDDEN
    if not parts.scheme:
        return text
    if (parts.query and not parts.query.startswith(HIDDEN)) or parts.fragment:  # a redacted URL stays as it is
        text = text.split("?", 1)[0].split("#", 1)[0] + ("?" + HIDDEN if parts.query else "")
    return text


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The credential values in an environment (the converter's), longest first."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if v and len(v) >= 4 and any(k.endswith(s) for s in SECRET_VARIABLES)}
    return sorted(found, key=len, reverse=True)


def redact_value(value: Any, secrets: Iterable[str] = ()) -> Any:
    """Every string in a JSON-like value redacted (redact_text), keys included; the structure kept."""
    secrets = list(secrets)
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {redact_text(str(k), secrets): redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v, secrets) for v in value]
    return value


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text with every URL in it redacted, every known secret value blanked, and no terminal escape codes."""
    out = _URL.sub(lambda m: redact_url(m.group(0)), _USERINFO.sub(r"\1", _TERMINAL.sub("", text)))
    for secret in secrets:
        if secret:
            out = out.replace(secret, HIDDEN)
    return out
