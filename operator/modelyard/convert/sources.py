"""Fetch a model source to a local path: a path (pvc:// maps to where the claim is mounted), http(s) or s3.

S3 credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), which
the Job fills from the referenced Secret; they are never logged or written to the manifest.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from modelyard.convert.errors import SourceUnavailable

PVC_MOUNT = Path("/mnt/source")


def fetch(uri: str, workdir: Path, pvc_root: Path = PVC_MOUNT) -> Path:
    """A local path holding the source named by `uri` (a file, or a directory for a SavedModel)."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        path = Path(parts.path if parts.scheme else uri)
    elif parts.scheme == "pvc":
        path = pvc_root / parts.path.lstrip("/")
    elif parts.scheme in ("http", "https"):
        path = workdir / (Path(parts.path).name or "model")
        try:
            with urllib.request.urlopen(uri, timeout=60) as resp, open(path, "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)
        except OSError as exc:
            raise SourceUnavailable(f"cannot download {_redact(uri)}: {exc}") from exc
    elif parts.scheme == "s3":
        path = _fetch_s3(parts.netloc, parts.path.lstrip("/"), workdir)
    else:
        raise SourceUnavailable(f"unsupported source scheme {parts.scheme!r} in {_redact(uri)}")
    if not path.exists():
        raise SourceUnavailable(f"{_redact(uri)} does not exist (looked at {path})")
    return path


def _fetch_s3(bucket: str, key: str, workdir: Path) -> Path:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client("s3")
    target = workdir / (Path(key).name or bucket)
    try:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=key)
        keys = [o["Key"] for o in listing.get("Contents", [])]
        if keys == [key]:
            s3.download_file(bucket, key, str(target))
            return target
        prefix = key.rstrip("/") + "/"
        children = [k for k in keys if k.startswith(prefix)]
        if not children:
            raise SourceUnavailable(f"s3://{bucket}/{key} does not exist")
        for k in children:
            dest = target / k[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, k, str(dest))
        return target
    except (BotoCoreError, ClientError) as exc:
        raise SourceUnavailable(f"cannot read s3://{bucket}/{key}: {exc}") from exc


def _redact(uri: str) -> str:
    """The URI without user:password@ or a query string (presigned URLs carry credentials there)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else uri


def digest(path: Path) -> str:
    """sha256 of a file, or of a directory's relative paths and contents in sorted order."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
