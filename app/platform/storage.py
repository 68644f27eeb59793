"""Where images live: an S3-compatible bucket (Cloudflare R2, MinIO) through
boto3, or a local folder that the API serves under ``/cdn/``.

Keys are deterministic (``users/<userId>/generations/<id>/<n>.<ext>``), so
re-running ``store`` overwrites the same object instead of orphaning one.

An object's URL is ``public_url(public_base, key)``, made whenever it is
shown, from the key and the base configured now: ``generation_assets.cdn_url``
is written at store time but never read back, so a new port (``BFF_PUBLIC_URL``)
or CDN domain (``R2_CDN_URL``) moves every link.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from app.platform.config import Settings

CACHE_CONTROL = "public, max-age=31536000, immutable"
# A bucket that takes the connection and never answers costs a call at most
# ATTEMPTS x READ_TIMEOUT (plus botocore's backoff, a few seconds): ~35 s, where
# five tries of 30 s held a submit's upload or /health for 150 s. A read is one
# wait for bytes, not the whole transfer: an image streams as long as it needs.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
ATTEMPTS = 3  # in all: 5xx, throttling and connection errors retried twice
# /health's probe: one short try (a load balancer's own probe gives up in seconds).
PROBE_CONNECT_TIMEOUT = 2.0
PROBE_READ_TIMEOUT = 3.0


class StorageError(Exception):
    """The backend could not be reached or refused the operation (transient)."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: datetime  # UTC


class Storage(Protocol):
    public_base: str  # where clients fetch objects: see ``public_base()``

    def put(self, key: str, data: bytes, content_type: str) -> str: ...
    def get(self, key: str) -> bytes: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def delete(self, keys: list[str]) -> None: ...
    def list(self, prefix: str, after: str | None, limit: int) -> list[StoredObject]:
        """Up to ``limit`` objects under ``prefix`` whose keys sort after
        ``after``, in key order (a page of a walk that can resume)."""
        ...

    def url(self, key: str) -> str: ...
    def check(self) -> None: ...


def public_base(settings: Settings) -> str:
    """The base URL clients fetch stored objects from, as configured now:
    ``R2_CDN_URL`` for the bucket, this API's ``/cdn`` (``BFF_PUBLIC_URL``,
    else the port) for local disk."""
    if settings.storage_backend == "s3":
        return settings.r2_cdn_url or ""
    return f"{settings.public_url}/cdn"


def public_url(base: str, key: str) -> str:
    """The URL of the object at ``key``: the one formula (``put`` returns it,
    every answer makes it again on read). A concatenation, no storage call:
    answers make one per asset."""
    return f"{base}/{key}"


def current_public_base() -> str:
    """The running app's public base, for readers handed no storage (needs an
    app context: a request, a worker's task, ``bff``)."""
    from flask import current_app

    return current_app.extensions["bff"].storage.public_base


def generation_prefix(user_id: int, generation_id: str) -> str:
    return f"users/{user_id}/generations/{generation_id}/"


def asset_key(user_id: int, generation_id: str, index: int, ext: str) -> str:
    return f"{generation_prefix(user_id, generation_id)}{index}.{ext}"


class LocalStorage:
    def __init__(self, root: Path, base: str) -> None:
        self.root = root
        self._resolved_root = root.resolve()  # once: resolving walks every component
        self.public_base = base.rstrip("/")

    def _path(self, key: str) -> Path:
        path = (self._resolved_root / key).resolve()
        if not path.is_relative_to(self._resolved_root):
            raise StorageError("key escapes the storage root")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return self.url(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise KeyError(key) from exc

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix)
        if not base.exists():
            return 0
        count = sum(1 for path in base.rglob("*") if path.is_file())
        shutil.rmtree(base)
        return count

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str, after: str | None, limit: int) -> list[StoredObject]:
        found = []
        for path in self._resolved_root.rglob("*"):
            key = path.relative_to(self._resolved_root).as_posix()
            if key.startswith(prefix) and (after is None or key > after) and path.is_file():
                if not path.name.startswith(".tmp-"):  # a put in progress
                    found.append(key)
        return [
            StoredObject(k, datetime.fromtimestamp(self._path(k).stat().st_mtime, UTC))
            for k in sorted(found)[:limit]
        ]

    def url(self, key: str) -> str:
        return public_url(self.public_base, key)

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.r2_bucket_name
        self.public_base = public_base(settings)

        def client(connect: float, read: float, attempts: int) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=settings.r2_endpoint_url,
                aws_access_key_id=settings.r2_access_key_id,
                aws_secret_access_key=settings.r2_secret_access_key,
                region_name=settings.r2_region,
                config=Config(
                    connect_timeout=connect,
                    read_timeout=read,
                    # with exponential backoff between attempts
                    retries={"total_max_attempts": attempts, "mode": "standard"},
                    s3={"addressing_style": "path"},
                ),
            )

        self.client = client(CONNECT_TIMEOUT, READ_TIMEOUT, ATTEMPTS)
        self.probe = client(PROBE_CONNECT_TIMEOUT, PROBE_READ_TIMEOUT, 1)

    def _call(self, method: str, client: Any = None, **kwargs):
        """One call on the bucket (``client``: another than ours): a missing
        key is KeyError, any other failure (botocore has retried what it
        could) is StorageError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(client or self.client, method)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = exc.response.get("Error", {}).get("Code")
            # A 404 that is no key's (NoSuchBucket; a HEAD of the bucket says
            # nothing but 404): the setting is wrong, not an image missing.
            if code == "NoSuchBucket" or (status == 404 and "Key" not in kwargs):
                missing = f"bucket {self.bucket!r} does not exist (R2_BUCKET_NAME)"
                raise StorageError(missing) from exc
            if status == 404 or code in ("NoSuchKey", "404"):
                raise KeyError(kwargs.get("Key")) from exc
            raise StorageError(f"bucket error: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"bucket unreachable: {exc}") from exc

    def put(self, key: str, data: bytes, content_type: str) -> str:
        self._call(
            "put_object", Key=key, Body=data, ContentType=content_type, CacheControl=CACHE_CONTROL
        )
        return self.url(key)

    def get(self, key: str) -> bytes:
        return self._call("get_object", Key=key)["Body"].read()

    def delete_prefix(self, prefix: str) -> int:
        keys = [o["Key"] for o in self._call("list_objects_v2", Prefix=prefix).get("Contents", [])]
        self.delete(keys)
        return len(keys)

    def delete(self, keys: list[str]) -> None:
        if keys:
            objects = [{"Key": k} for k in keys]
            self._call("delete_objects", Delete={"Objects": objects, "Quiet": True})

    def list(self, prefix: str, after: str | None, limit: int) -> list[StoredObject]:
        resp = self._call("list_objects_v2", Prefix=prefix, StartAfter=after or "", MaxKeys=limit)
        return [StoredObject(o["Key"], o["LastModified"]) for o in resp.get("Contents", [])]

    def url(self, key: str) -> str:
        return public_url(self.public_base, key)

    def check(self) -> None:
        self._call("head_bucket", client=self.probe)


def make_storage(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.media_root, public_base(settings))
