"""Fetch a model source to a local path: a path (pvc:// maps to where the claim is mounted), http(s) or s3.

An ONNX source may keep its weights in external data files beside the graph (onnxdata.py): from a path they must
be next to it; over http(s) and s3 they are fetched from beside the graph's URL or key, after their names are
checked to stay inside the model's directory.

Every fetch is confined and bounded (docs/security.md): a pvc:// path and every S3 key under a prefix is a
relative name inside the claim's mount or the work directory (confine.py); what a source holds, however it
arrives, counts against conversion.maxSourceSize and is refused as it streams past it; an http(s) download has
timeouts, follows at most a few redirects, never to another scheme, and connects to no loopback, link-local or
private address that the administrator did not allow (the address is checked on the connected socket, so a
DNS answer that changes between look-up and connect does not get around it).

S3 credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), which
the Job fills from the referenced Secret; they are never logged or written to the manifest.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import posixpath
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin, urlsplit

from modelyard.convert.confine import check_tree, inside, join_inside, size_text
from modelyard.convert.errors import SourceRefused, SourceUnavailable
from modelyard.convert.policy import Network, Policy
from modelyard.redact import redact_url

PVC_MOUNT = Path("/mnt/source")
CHUNK = 1 << 20


Sibling = Callable[[str, Path], None]
"""Downloads the file at a location relative to the source's graph into a local path."""


class Budget:
    """Bytes a conversion may still read from its source: every download and copy takes from it."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int, what: str) -> None:
        self.used += n
        if self.limit is not None and self.used > self.limit:
            raise SourceRefused(f"{what} is larger than conversion.maxSourceSize ({size_text(self.limit)}): more "
                                f"than {size_text(self.used)} read, and the rest is not fetched; raise the limit if "
                                "the model really is that large")


def fetch(uri: str, workdir: Path, pvc_root: Path = PVC_MOUNT, onnx: bool = False, policy: Policy | None = None,
          max_bytes: int | None = None) -> Path:
    """A local path holding the source named by `uri` (a file, or a directory for a SavedModel). With `onnx`, the
    graph file, with every external data file it names beside it."""
    policy = policy or Policy()
    budget = Budget(max_bytes)
    parts = urlsplit(uri)
    sibling: Sibling | None = None
    fetched = parts.scheme in ("http", "https", "s3")
    if parts.scheme in ("", "file", "pvc"):
        path = local_path(uri, pvc_root, policy, "model.uri")
    elif parts.scheme in ("http", "https"):
        if "@" in parts.netloc:
            raise SourceRefused(f"{redact_url(uri)}: an http(s) source URL carries credentials (user:password@), which "
                                "the converter never sends and every reader of the ModelDeployment could see; use "
                                "an s3:// source with model.credentialsSecretRef, or a presigned URL")
        path = workdir / (Path(parts.path).name or "model")
        _download(uri, path, policy, budget)
        sibling = lambda location, target: _download(urljoin(uri, quote(location)), target, policy, budget)  # noqa: E731
    elif parts.scheme == "s3":
        path, sibling = _fetch_s3(parts.netloc, parts.path.lstrip("/"), workdir, budget)
    else:
        raise SourceUnavailable(f"unsupported source scheme {parts.scheme!r} in {redact_url(uri)}")
    if not path.exists() and not path.is_symlink():
        raise SourceUnavailable(f"{redact_url(uri)} does not exist (looked at {path})")
    if not fetched:  # what is read in place: no link out of the source, no more than the limit
        check_tree(path, f"the source {path.name}", max_bytes)
    if onnx:
        from modelyard.convert.onnxdata import companions, graph_of

        path = graph_of(path)
        companions(path, sibling if path.is_file() and sibling is not None else None)
    return path


def local_path(uri: str, pvc_root: Path, policy: Policy, what: str) -> Path:
    """A pvc:// URI or a plain path as a local path. A pvc:// path is a relative name inside the claim's mount;
    with policy.confine (the conversion Job), so is a plain path: nothing else of the pod's files is readable."""
    parts = urlsplit(uri)
    if parts.scheme == "pvc":
        return join_inside(pvc_root, parts.path.lstrip("/"), f"the {what} path")
    path = Path(parts.path if parts.scheme else uri)
    if policy.confine:
        if not path.is_absolute():
            return join_inside(pvc_root, str(path), f"the {what} path")
        return inside(pvc_root, path, f"{what} {str(path)!r}")
    return path


def _check_address(host: str, networks: list[Network]) -> None:
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    forms: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        forms.append(addr)
    if any(form in net for form in forms for net in networks):
        return
    if not addr.is_global:
        kind = ("loopback" if addr.is_loopback else "link-local (cloud metadata lives there)" if addr.is_link_local
                else "reserved" if addr.is_unspecified or addr.is_reserved or addr.is_multicast else "private")
        raise SourceRefused(f"the source's host resolves to {addr}, a {kind} address: the converter fetches from "
                            "those only where the operator's administrator allows it (converter.allowedSourceCIDRs, "
                            "for an in-cluster server such as MinIO)")


def _opener(policy: Policy, scheme: str) -> urllib.request.OpenerDirector:
    networks = policy.networks()

    def guarded(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Guarded(base):  # type: ignore[valid-type,misc]
            def connect(self) -> None:
                # Every address the name resolves to is checked before connecting (no packet to a metadata
                # service), and the connected peer after (a DNS answer that changed in between).
                for info in socket.getaddrinfo(self.host, self.port, proto=socket.IPPROTO_TCP):
                    _check_address(str(info[4][0]), networks)
                super().connect()
                try:
                    _check_address(self.sock.getpeername()[0], networks)
                except SourceRefused:
                    self.sock.close()
                    raise
        return Guarded

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(guarded(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(guarded(http.client.HTTPSConnection), req,
                                context=self._context)  # type: ignore[attr-defined]

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = policy.max_redirects

        def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                             newurl: str) -> urllib.request.Request | None:
            target = urlsplit(newurl).scheme
            if target != scheme:
                raise SourceRefused(f"the source redirects from {scheme} to {target or 'another scheme'} "
                                    f"({redact_url(newurl)}): a redirect never changes the scheme")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

        def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any) -> Any:
            visited = getattr(req, "redirect_dict", {})
            if sum(visited.values()) >= self.max_redirections:
                raise SourceRefused(f"the source redirects more than {self.max_redirections} times: not followed")
            return super().http_error_302(req, fp, code, msg, headers)

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    # No proxy from the environment: the address checked is the server's, not a proxy's.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), Http, Https, Redirects)


def _download(url: str, path: Path, policy: Policy, budget: Budget) -> None:
    scheme = urlsplit(url).scheme
    try:
        with _opener(policy, scheme).open(url, timeout=policy.timeout_seconds) as resp, open(path, "wb") as out:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and budget.limit is not None and budget.used + int(length) > budget.limit:
                budget.take(int(length), f"{redact_url(url)} (Content-Length)")
            _copy(resp, out, budget, redact_url(url))
    except (OSError, http.client.HTTPException) as exc:
        detail = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise SourceUnavailable(f"cannot download {redact_url(url)}: {redact_url(str(detail))}") from None


def _copy(src: BinaryIO, out: BinaryIO, budget: Budget, what: str) -> None:
    while chunk := src.read(CHUNK):
        budget.take(len(chunk), what)
        out.write(chunk)


def _fetch_s3(bucket: str, key: str, workdir: Path, budget: Budget) -> tuple[Path, Sibling | None]:
    """The object `key`, or every object under the prefix `key/`; and how to fetch a file beside the object."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client("s3")
    target = workdir / (Path(key).name or bucket)

    def download(k: str, size: int, dest: Path) -> None:
        budget.take(size, f"s3://{bucket}/{key}")
        s3.download_file(bucket, k, str(dest))
        if dest.stat().st_size != size:  # the listing and the object disagree: count what arrived
            budget.take(dest.stat().st_size - size, f"s3://{bucket}/{key}")

    def sibling(location: str, path: Path) -> None:
        near = posixpath.join(posixpath.dirname(key), location)
        try:
            head = s3.head_object(Bucket=bucket, Key=near)
            download(near, int(head.get("ContentLength", 0)), path)
        except (BotoCoreError, ClientError) as exc:
            raise SourceUnavailable(f"cannot read s3://{bucket}/{near}: {exc}") from exc

    try:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=key)
        objects = {o["Key"]: int(o.get("Size", 0)) for o in listing.get("Contents", [])}
        if key in objects:  # one object (model.onnx also lists model.onnx.data: a prefix, not a directory)
            download(key, objects[key], target)
            return target, sibling
        prefix = key.rstrip("/") + "/"
        # A "folder/" marker (an empty object whose key ends in /) is no file.
        children = {k: size for k, size in objects.items() if k.startswith(prefix) and not k.endswith("/")}
        if not children:
            raise SourceUnavailable(f"s3://{bucket}/{key} does not exist")
        dests = {k: join_inside(target, k[len(prefix):], f"the S3 object key under s3://{bucket}/{prefix}")
                 for k in children}  # every key checked before anything is written
        if budget.limit is not None and sum(children.values()) > budget.limit:
            budget.take(sum(children.values()), f"s3://{bucket}/{prefix}")
        for k, dest in dests.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            download(k, children[k], dest)
        return target, None
    except (BotoCoreError, ClientError) as exc:
        raise SourceUnavailable(f"cannot read s3://{bucket}/{key}: {exc}") from exc


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
