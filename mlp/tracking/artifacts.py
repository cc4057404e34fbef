"""The artifact store behind MLflow's `mlflow-artifacts` proxy: a local folder or an S3 prefix.

Paths come from clients and are untrusted: every one is normalised and refused when it is
absolute, has a `..` segment, a NUL, or a backslash. Uploads stream to a temporary file in
fixed-size chunks (memory stays bounded whatever the size) and are renamed into place only
once complete, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from mlp.tracking.errors import TrackingError, not_found

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FileInfo:
    path: str
    is_dir: bool
    file_size: int | None = None

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "is_dir": self.is_dir}
        if not self.is_dir and self.file_size is not None:
            out["file_size"] = self.file_size
        return out


def safe_path(path: str | None) -> str:
    """A relative POSIX path with no traversal, or TrackingError; '' for the root."""
    raw = path or ""
    if "\x00" in raw or "\\" in raw:
        raise TrackingError(f"Invalid path: {raw!r}")
    if raw.startswith("/") or any(part == ".." for part in raw.split("/")):
        raise TrackingError(f"Invalid path: {raw!r}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    return "/".join(parts)


class ArtifactBackend(Protocol):
    root_uri: str

    async def upload(self, path: str, chunks: AsyncIterator[bytes], max_bytes: int) -> int: ...

    def open(self, path: str) -> tuple[Iterator[bytes], int]: ...

    def list(self, path: str) -> list[FileInfo]: ...

    def delete(self, path: str) -> None: ...

    def local_path(self, path: str) -> Path | None: ...


class TooLarge(TrackingError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"Artifact is larger than the server's limit of {limit} bytes", "INVALID_PARAMETER_VALUE")


async def _spool(chunks: AsyncIterator[bytes], dest_dir: Path, max_bytes: int) -> tuple[Path, int, str]:
    """Write a stream to a temporary file in dest_dir; returns the file, its size and sha256."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".upload-")
    size = 0
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(max_bytes)
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp), size, digest.hexdigest()


class LocalArtifacts:
    """Artifacts under one folder; the `mlflow-artifacts:/` URI maps onto it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root_uri = self.root.as_uri()

    def _target(self, path: str) -> Path:
        rel = safe_path(path)
        target = (self.root / rel).resolve() if rel else self.root
        # a symlink planted under the root must not lead outside it either
        if target != self.root and self.root not in target.parents:
            raise TrackingError(f"Invalid path: {path!r}")
        return target

    async def upload(self, path: str, chunks: AsyncIterator[bytes], max_bytes: int) -> int:
        target = self._target(path)
        if target == self.root:
            raise TrackingError("Invalid path: an upload needs a file name")
        tmp, size, _ = await _spool(chunks, target.parent, max_bytes)
        os.replace(tmp, target)
        return size

    def open(self, path: str) -> tuple[Iterator[bytes], int]:
        target = self._target(path)
        if not target.is_file():
            raise not_found(f"File {safe_path(path)} not found")

        def read() -> Iterator[bytes]:
            with target.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk

        return read(), target.stat().st_size

    def list(self, path: str) -> list[FileInfo]:
        target = self._target(path)
        rel = safe_path(path)
        if not target.is_dir():
            return []
        out = []
        for child in sorted(target.iterdir()):
            if child.name.startswith(".upload-"):
                continue
            child_rel = f"{rel}/{child.name}" if rel else child.name
            if child.is_dir():
                out.append(FileInfo(child_rel, True))
            else:
                out.append(FileInfo(child_rel, False, child.stat().st_size))
        return out

    def delete(self, path: str) -> None:
        target = self._target(path)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    def local_path(self, path: str) -> Path | None:
        target = self._target(path)
        return target if target.is_file() else None


class S3Artifacts:
    """Artifacts under s3://bucket/prefix through boto3 (AWS, MinIO, moto's server)."""

    def __init__(self, uri: str, spool_dir: Path, endpoint_url: str | None = None) -> None:
        import boto3

        if not uri.startswith("s3://"):
            raise ValueError(f"{uri}: not an s3:// URI")
        bucket, _, prefix = uri[5:].partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root_uri = uri.rstrip("/")
        self.spool_dir = spool_dir
        self.client = boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("MLFLOW_S3_ENDPOINT_URL"))

    def _key(self, path: str) -> str:
        rel = safe_path(path)
        return f"{self.prefix}/{rel}" if self.prefix else rel

    async def upload(self, path: str, chunks: AsyncIterator[bytes], max_bytes: int) -> int:
        key = self._key(path)
        tmp, size, _ = await _spool(chunks, self.spool_dir, max_bytes)
        try:
            # upload_file streams the file in multipart chunks: memory stays bounded
            self.client.upload_file(str(tmp), self.bucket, key)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def open(self, path: str) -> tuple[Iterator[bytes], int]:
        key = self._key(path)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            raise not_found(f"File {safe_path(path)} not found") from None
        body = obj["Body"]
        return iter(lambda: body.read(CHUNK), b""), int(obj["ContentLength"])

    def list(self, path: str) -> list[FileInfo]:
        rel = safe_path(path)
        prefix = self._key(path)
        prefix = f"{prefix}/" if prefix else ""
        out: list[FileInfo] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                name = PurePosixPath(cp["Prefix"].rstrip("/")).name
                out.append(FileInfo(f"{rel}/{name}" if rel else name, True))
            for obj in page.get("Contents", []):
                name = PurePosixPath(obj["Key"]).name
                out.append(FileInfo(f"{rel}/{name}" if rel else name, False, int(obj["Size"])))
        return sorted(out, key=lambda f: f.path)

    def delete(self, path: str) -> None:
        prefix = self._key(path)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"] == prefix or obj["Key"].startswith(prefix + "/"):
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])

    def local_path(self, path: str) -> Path | None:
        return None


def backend_for(uri_or_path: str, spool_dir: Path, s3_endpoint_url: str | None = None) -> ArtifactBackend:
    if uri_or_path.startswith("s3://"):
        return S3Artifacts(uri_or_path, spool_dir, s3_endpoint_url)
    if uri_or_path.startswith("file://"):
        return LocalArtifacts(Path(uri_or_path[7:]))
    return LocalArtifacts(Path(uri_or_path))
