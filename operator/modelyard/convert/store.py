"""Where converted repositories are published: a directory (a mounted PVC, or --out) or an S3 prefix.

Both lay a repository out as <store>/<key>/{manifest.json,<model>/...}; `manifest.json` is written last, so its
presence means the repository is complete. It is reused only once verified: the manifest names its own key and
the sha256 of every file beside it, and the files under the key are exactly those, byte for byte (`verify`).
Whoever can write to a shared store could otherwise plant a model under another team's key. A key whose files do
not match, or that holds files without a manifest, is converted again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from modelyard.convert.errors import SourceUnavailable

MANIFEST = "manifest.json"
STORE_PREFIX = "STORE_"


class Store(Protocol):
    def find(self, key: str) -> dict[str, Any] | None:
        """The manifest of a complete repository under `key`, if there is one."""

    def publish(self, key: str, staging: Path) -> str:
        """Publish the repository staged in `staging` under `key`, replacing whatever was there; return where it
        now is."""

    def files(self, key: str) -> Iterator[tuple[str, Iterator[bytes]]]:
        """Every file under `key` but the manifest: its path relative to the key and its content in chunks."""


def file_digests(repository: Path) -> dict[str, str]:
    """sha256 of every file of a staged repository, by its path relative to it (the manifest's `files`)."""
    out = {}
    for path in sorted(repository.rglob("*")):
        if not path.is_file() or path == repository / MANIFEST:
            continue
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[str(path.relative_to(repository))] = h.hexdigest()
    return out


def verify(store: Store, key: str, manifest: dict[str, Any]) -> str | None:
    """None when the repository under `key` is what its manifest says; else what differs, for the user."""
    if manifest.get("key") != key:
        return f"its manifest names key {str(manifest.get('key'))[:40]!r}"
    want = manifest.get("files")
    if not isinstance(want, dict) or not want:
        return "its manifest lists no file digests (written by an older converter, or not by a converter)"
    seen: set[str] = set()
    for name, chunks in store.files(key):
        h = hashlib.sha256()
        for chunk in chunks:
            h.update(chunk)
        if name not in want:
            return f"{name} is not in its manifest"
        if h.hexdigest() != want[name]:
            return f"{name} has sha256 {h.hexdigest()[:12]}, its manifest says {str(want[name])[:12]}"
        seen.add(name)
    missing = sorted(set(want) - seen)
    return f"{missing[0]} is missing" if missing else None


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def find(self, key: str) -> dict[str, Any] | None:
        path = self.root / key / MANIFEST
        if path.is_symlink() or not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def files(self, key: str) -> Iterator[tuple[str, Iterator[bytes]]]:
        base = self.root / key
        for path in sorted(base.rglob("*")):
            if path == base / MANIFEST or (path.is_dir() and not path.is_symlink()):
                continue
            if path.is_symlink() or not path.is_file():  # a link or a device is nothing a converter writes
                yield str(path.relative_to(base)), iter([b"(not a regular file)"])
                continue
            yield str(path.relative_to(base)), _chunks(path)

    def publish(self, key: str, staging: Path) -> str:
        final = self.root / key
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() or final.is_symlink():
            # Replaced (a concurrent conversion of the same key wrote the same bytes; anything else did not verify):
            # moved aside in one rename, so the key is never half old and half new.
            aside = final.parent / f".{final.name}.replaced-{uuid.uuid4().hex[:8]}"
            final.rename(aside)
            shutil.move(str(staging), str(final))
            if aside.is_dir() and not aside.is_symlink():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink()
        else:
            shutil.move(str(staging), str(final))
        return str(final)


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(1 << 20), b"")


class S3Store:
    """An s3://bucket/prefix store. Credentials: STORE_AWS_* variables when set (the Job passes the store's Secret
    with that prefix), otherwise the default AWS chain."""

    def __init__(self, uri: str, endpoint: str | None = None) -> None:
        import boto3

        parts = urlsplit(uri)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        env = os.environ
        self.client = boto3.client(
            "s3",
            aws_access_key_id=env.get(f"{STORE_PREFIX}AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=env.get(f"{STORE_PREFIX}AWS_SECRET_ACCESS_KEY"),
            aws_session_token=env.get(f"{STORE_PREFIX}AWS_SESSION_TOKEN"),
            region_name=env.get(f"{STORE_PREFIX}AWS_DEFAULT_REGION"),
            endpoint_url=endpoint or env.get(f"{STORE_PREFIX}AWS_ENDPOINT_URL"),
        )

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def find(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key, MANIFEST))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise SourceUnavailable(f"cannot read the store s3://{self.bucket}/{self.prefix}: {exc}") from exc
        except BotoCoreError as exc:  # the endpoint does not answer
            raise SourceUnavailable(f"cannot reach the store s3://{self.bucket}/{self.prefix}: {exc}") from exc
        try:
            manifest = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def _listing(self, key: str) -> list[str]:
        prefix = self._key(key) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        return [o["Key"] for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for o in page.get("Contents", [])]

    def files(self, key: str) -> Iterator[tuple[str, Iterator[bytes]]]:
        prefix = self._key(key) + "/"
        for k in sorted(self._listing(key)):
            name = k[len(prefix):]
            if name == MANIFEST:
                continue
            yield name, self._chunks(k)

    def _chunks(self, k: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=k)["Body"]
        while chunk := body.read(1 << 20):
            yield chunk

    def publish(self, key: str, staging: Path) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        files = sorted(p for p in staging.rglob("*") if p.is_file())
        # The manifest last: until it is there, the repository does not count as published. A key that held
        # something else loses its manifest first, and the files the new repository does not have after.
        files.sort(key=lambda p: p.name == MANIFEST)
        try:
            before = set(self._listing(key))
            if self._key(key, MANIFEST) in before:
                self.client.delete_object(Bucket=self.bucket, Key=self._key(key, MANIFEST))
            written = set()
            for path in files:
                written.add(self._key(key, str(path.relative_to(staging))))
                self.client.upload_file(str(path), self.bucket, self._key(key, str(path.relative_to(staging))))
            for stale in sorted(before - written):
                self.client.delete_object(Bucket=self.bucket, Key=stale)
        except (BotoCoreError, ClientError) as exc:
            raise SourceUnavailable(f"cannot write to the store s3://{self.bucket}/{self.prefix}: {exc}") from exc
        return f"s3://{self.bucket}/{self._key(key)}"


def open_store(store: Path | str, endpoint: str | None = None) -> Store:
    if isinstance(store, str) and store.startswith("s3://"):
        return S3Store(store, endpoint)
    return DirectoryStore(Path(store))
