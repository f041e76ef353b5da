"""Where converted repositories are published: a directory (a mounted PVC, or --out) or an S3 prefix.

Both lay a repository out as <store>/<key>/{manifest.json,<model>/...}; `manifest.json` is written last, so its
presence means the repository is complete and can be reused.
"""

from __future__ import annotations

import json
import os
import shutil
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
        """Publish the repository staged in `staging` under `key`; return where it now is."""


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def find(self, key: str) -> dict[str, Any] | None:
        path = self.root / key / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None

    def publish(self, key: str, staging: Path) -> str:
        final = self.root / key
        self.root.mkdir(parents=True, exist_ok=True)
        if not final.exists():  # else a concurrent conversion of the same key finished first: same content
            shutil.move(str(staging), str(final))
        return str(final)


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
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key, MANIFEST))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise SourceUnavailable(f"cannot read the store s3://{self.bucket}/{self.prefix}: {exc}") from exc
        manifest: dict[str, Any] = json.loads(body)
        return manifest

    def publish(self, key: str, staging: Path) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        files = sorted(p for p in staging.rglob("*") if p.is_file())
        # The manifest last: until it is there, the repository does not count as published.
        files.sort(key=lambda p: p.name == MANIFEST)
        try:
            for path in files:
                self.client.upload_file(str(path), self.bucket, self._key(key, str(path.relative_to(staging))))
        except (BotoCoreError, ClientError) as exc:
            raise SourceUnavailable(f"cannot write to the store s3://{self.bucket}/{self.prefix}: {exc}") from exc
        return f"s3://{self.bucket}/{self._key(key)}"


def open_store(store: Path | str, endpoint: str | None = None) -> Store:
    if isinstance(store, str) and store.startswith("s3://"):
        return S3Store(store, endpoint)
    return DirectoryStore(Path(store))
