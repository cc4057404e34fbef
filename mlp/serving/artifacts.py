"""Artifact store: fetch model files by URI, verified against their sha256 digest.

One interface over local folders (`file:///abs/path`) and S3 (`s3://bucket/key`, boto3;
the endpoint is configurable so MinIO and moto work). The local runtime may also name an
*artifact mirror*, a folder laid out as `<mirror>/<bucket>/<key>`: an `s3://` URI is looked
up there first, which is how the example `dev` environment runs offline.

Fetched files land in a content-addressed cache (`<cache>/sha256/<hex>/<basename>`) only
after their digest matched, so a cache hit never needs the network and a tampered or
wrong artifact is never loaded. URIs are checked for path traversal (`..`, percent-encoded
dots, absolute keys) before anything touches the file system.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._+=@,-]+$")
S3_ENDPOINT_ENV = "MLP_S3_ENDPOINT_URL"
CHUNK = 1 << 20


class ArtifactError(Exception):
    """An artifact could not be fetched or was refused; the message is one clear line."""


class DigestMismatch(ArtifactError):
    """The artifact's sha256 differs from the digest the spec declares."""


@dataclass(frozen=True)
class ParsedURI:
    scheme: str  # "file" | "s3"
    bucket: str  # s3 bucket; "" for file
    key: str  # s3 key, or the absolute path for file

    @property
    def basename(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def _fully_unquote(text: str) -> str:
    # Decode repeatedly so double-encoded traversal ("%252e%252e") is seen too.
    for _ in range(4):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def parse_uri(uri: str) -> ParsedURI:
    """Split and check an artifact URI; raise ArtifactError on anything unsafe or unsupported."""
    if not isinstance(uri, str) or not uri:
        raise ArtifactError("artifact uri is empty")
    if any(c in uri for c in ("\\", "\x00", "\n", "\r")):
        raise ArtifactError(f"{uri}: artifact uri contains a forbidden character")
    decoded = _fully_unquote(uri)
    if decoded != uri:
        # Percent-encoding has no legitimate use in our artifact keys and is the usual way
        # to smuggle "..": refuse it outright rather than guess what the store would do.
        raise ArtifactError(f"{uri}: percent-encoded artifact uris are not accepted")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ArtifactError(f"{uri}: artifact uri needs a scheme (s3:// or file:///)")
    if scheme == "file":
        if not rest.startswith("/"):
            raise ArtifactError(f"{uri}: file:// uris must be absolute (file:///path)")
        segments = rest.split("/")[1:]
        _check_segments(uri, segments)
        return ParsedURI("file", "", "/" + "/".join(segments))
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise ArtifactError(f"{uri}: s3 uri needs a bucket and a key (s3://bucket/key)")
        _check_segments(uri, [bucket, *key.split("/")])
        return ParsedURI("s3", bucket, key)
    raise ArtifactError(f"{uri}: unsupported artifact scheme {scheme!r} (use s3:// or file:///)")


def _check_segments(uri: str, segments: list[str]) -> None:
    for seg in segments:
        if seg in ("", ".", ".."):
            raise ArtifactError(f"{uri}: artifact path has an empty, '.' or '..' segment")
        if not SAFE_SEGMENT.match(seg):
            raise ArtifactError(f"{uri}: artifact path segment {seg!r} has characters outside [A-Za-z0-9._+=@,-]")


def parse_digest(digest: str) -> str:
    match = DIGEST_RE.match(digest or "")
    if not match:
        raise ArtifactError(f"digest {digest!r} is not of the form sha256:<64 hex>")
    return match.group(1)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _within(base: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(base.resolve())
    except ValueError:
        return False
    return True


class ArtifactStore:
    """Fetch-and-verify with a digest-addressed cache; also uploads (`push`)."""

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        mirror: str | Path | None = None,
        s3_endpoint_url: str | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.mirror = Path(mirror) if mirror is not None else None
        self.s3_endpoint_url = s3_endpoint_url or os.environ.get(S3_ENDPOINT_ENV) or None
        self._s3: Any = None

    # --- reading -------------------------------------------------------------------------

    def cached(self, digest: str) -> Path | None:
        hexd = parse_digest(digest)
        folder = self.cache_dir / "sha256" / hexd
        if folder.is_dir():
            files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
            if files:
                return files[0]
        return None

    def fetch(self, uri: str, digest: str) -> Path:
        """Local path of the verified artifact; raise DigestMismatch or ArtifactError."""
        parsed = parse_uri(uri)
        hexd = parse_digest(digest)
        hit = self.cached(digest)
        if hit is not None:
            return hit
        folder = self.cache_dir / "sha256" / hexd
        folder.mkdir(parents=True, exist_ok=True)
        with self._open(parsed, uri) as src:
            fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".partial-")
            h = hashlib.sha256()
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        h.update(chunk)
                        out.write(chunk)
                actual = "sha256:" + h.hexdigest()
                if actual != f"sha256:{hexd}":
                    raise DigestMismatch(
                        f"{uri}: sha256 mismatch: the spec declares sha256:{hexd[:12]}..., "
                        f"the artifact is {actual[:19]}...; refusing to load it"
                    )
                final = folder / parsed.basename
                os.replace(tmp_name, final)
                return final
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)

    def _open(self, parsed: ParsedURI, uri: str) -> Any:
        if parsed.scheme == "file":
            path = Path(parsed.key)
            if not path.is_file():
                raise ArtifactError(f"{uri}: no such file")
            return open(path, "rb")
        if self.mirror is not None:
            local = self.mirror / parsed.bucket / parsed.key
            if not _within(self.mirror, local):
                raise ArtifactError(f"{uri}: key escapes the artifact mirror")
            if local.is_file():
                return open(local, "rb")
        return _S3Body(self._client(), parsed, uri)

    def _client(self) -> Any:
        if self._s3 is None:
            import boto3  # local import: only S3 users pay for boto3

            kwargs: dict[str, Any] = {}
            if self.s3_endpoint_url:
                kwargs["endpoint_url"] = self.s3_endpoint_url
            if not os.environ.get("AWS_DEFAULT_REGION") and not os.environ.get("AWS_REGION"):
                kwargs["region_name"] = "us-east-1"
            self._s3 = boto3.client("s3", **kwargs)
        return self._s3

    # --- writing -------------------------------------------------------------------------

    def push(self, file: str | Path, dest: str, model: str, version: int | None = None) -> tuple[str, str, int]:
        """Upload `file` to `<dest>/<model>/<version>/model.<ext>`; return (uri, digest, version).

        Without a version, the next one after the highest already under `<dest>/<model>/`.
        """
        src = Path(file)
        if not src.is_file():
            raise ArtifactError(f"{file}: no such file")
        if not SAFE_SEGMENT.match(model) or model in (".", ".."):
            raise ArtifactError(f"model name {model!r} is not a safe path segment")
        dest = dest.rstrip("/")
        try:
            parsed = parse_uri(dest + "/x")  # validate the prefix itself
        except ArtifactError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise ArtifactError(f"{dest}: not a valid destination ({reason})") from None
        digest = sha256_file(src)
        ext = "".join(src.suffixes[-1:]) or ".bin"
        if version is None:
            version = max(self._versions(parsed, model), default=0) + 1
        name = f"model{ext}"
        uri = f"{dest}/{model}/{version}/{name}"
        target = parse_uri(uri)
        if parsed.scheme == "file":
            out = Path(target.key)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
        else:
            self._client().upload_file(str(src), target.bucket, target.key)
        return uri, digest, version

    def _versions(self, prefix: ParsedURI, model: str) -> Iterator[int]:
        base_key = prefix.key[: -len("/x")]
        if prefix.scheme == "file":
            folder = Path(base_key) / model
            if folder.is_dir():
                for child in folder.iterdir():
                    if child.name.isdigit():
                        yield int(child.name)
            return
        key_prefix = (base_key + "/" if base_key else "") + model + "/"
        resp = self._client().list_objects_v2(Bucket=prefix.bucket, Prefix=key_prefix, Delimiter="/")
        for cp in resp.get("CommonPrefixes", []):
            part = cp["Prefix"][len(key_prefix) :].strip("/")
            if part.isdigit():
                yield int(part)


class _S3Body:
    """A streaming S3 object body usable as a context manager."""

    def __init__(self, client: Any, parsed: ParsedURI, uri: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._resp = client.get_object(Bucket=parsed.bucket, Key=parsed.key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise ArtifactError(f"{uri}: S3 get_object failed: {code}") from None
        except BotoCoreError as exc:
            raise ArtifactError(f"{uri}: S3 unreachable: {exc}") from None
        self._body: IO[bytes] = self._resp["Body"]

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)

    def __enter__(self) -> _S3Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self._body.close()
