"""Fetch a model source to a local path: a path (pvc:// maps to where the claim is mounted), http(s) or s3.

An ONNX source may keep its weights in external data files beside the graph (onnxdata.py): from a path they must
be next to it; over http(s) and s3 they are fetched from beside the graph's URL or key, after their names are
checked to stay inside the model's directory.

S3 credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), which
the Job fills from the referenced Secret; they are never logged or written to the manifest.
"""

from __future__ import annotations

import hashlib
import posixpath
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

from modelyard.convert.errors import SourceUnavailable

PVC_MOUNT = Path("/mnt/source")


Sibling = Callable[[str, Path], None]
"""Downloads the file at a location relative to the source's graph into a local path."""


def fetch(uri: str, workdir: Path, pvc_root: Path = PVC_MOUNT, onnx: bool = False) -> Path:
    """A local path holding the source named by `uri` (a file, or a directory for a SavedModel). With `onnx`, the
    graph file, with every external data file it names beside it."""
    parts = urlsplit(uri)
    sibling: Sibling | None = None
    if parts.scheme in ("", "file"):
        path = Path(parts.path if parts.scheme else uri)
    elif parts.scheme == "pvc":
        path = pvc_root / parts.path.lstrip("/")
    elif parts.scheme in ("http", "https"):
        path = workdir / (Path(parts.path).name or "model")
        _download(uri, path)
        sibling = lambda location, target: _download(urljoin(uri, quote(location)), target)  # noqa: E731
    elif parts.scheme == "s3":
        path, sibling = _fetch_s3(parts.netloc, parts.path.lstrip("/"), workdir)
    else:
        raise SourceUnavailable(f"unsupported source scheme {parts.scheme!r} in {_redact(uri)}")
    if not path.exists():
        raise SourceUnavailable(f"{_redact(uri)} does not exist (looked at {path})")
    if onnx:
        from modelyard.convert.onnxdata import companions, graph_of

        path = graph_of(path)
        companions(path, sibling if path.is_file() and sibling is not None else None)
    return path


def _download(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(path, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except OSError as exc:
        raise SourceUnavailable(f"cannot download {_redact(url)}: {exc}") from exc


def _fetch_s3(bucket: str, key: str, workdir: Path) -> tuple[Path, Sibling | None]:
    """The object `key`, or every object under the prefix `key/`; and how to fetch a file beside the object."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client("s3")
    target = workdir / (Path(key).name or bucket)

    def sibling(location: str, path: Path) -> None:
        near = posixpath.join(posixpath.dirname(key), location)
        try:
            s3.download_file(bucket, near, str(path))
        except (BotoCoreError, ClientError) as exc:
            raise SourceUnavailable(f"cannot read s3://{bucket}/{near}: {exc}") from exc

    try:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=key)
        keys = [o["Key"] for o in listing.get("Contents", [])]
        if key in keys:  # one object (model.onnx also lists model.onnx.data: a prefix, not a directory)
            s3.download_file(bucket, key, str(target))
            return target, sibling
        prefix = key.rstrip("/") + "/"
        children = [k for k in keys if k.startswith(prefix)]
        if not children:
            raise SourceUnavailable(f"s3://{bucket}/{key} does not exist")
        for k in children:
            dest = target / k[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, k, str(dest))
        return target, None
    except (BotoCoreError, ClientError) as exc:
        raise SourceUnavailable(f"cannot read s3://{bucket}/{key}: {exc}") from exc


def _redact(uri: str) -> str:
    """The URI without user:password@ or a query string (presigned URLs carry credentials there)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else uri


def digest(path: Path, companions: list[Path] | None = None) -> str:
    """sha256 of a file (and its `companions`, by their paths relative to it), or of a directory's relative paths
    and contents in sorted order."""
    h = hashlib.sha256()
    base = path if path.is_dir() else path.parent
    files = [path, *sorted(companions or [])] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir() or f != path:
            h.update(str(f.relative_to(base)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
