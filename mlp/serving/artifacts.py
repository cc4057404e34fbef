"""Artifact store: fetch model files by URI, verified against their sha256 digest.

One interface over local folders (`file:///abs/path`), S3 (`s3://bucket/key`, boto3),
Google Cloud Storage (`gs://bucket/key`, google-cloud-storage), Azure Blob Storage
(`azure://ACCOUNT/CONTAINER/key` or `https://ACCOUNT.blob.core.windows.net/CONTAINER/key`,
azure-storage-blob) and plain `https://` downloads. Each cloud SDK is an optional extra and
is imported only when a URI of its scheme is used.

Credentials are never part of a URI (validation refuses user:password and query strings);
each SDK finds them by reference, the way its own tools do:
- S3: the AWS credential chain; `MLP_S3_ENDPOINT_URL` points at MinIO or moto.
- GCS: Application Default Credentials; `STORAGE_EMULATOR_HOST` points at an emulator
  (then anonymous credentials are used, as the emulators expect).
- Azure: `AZURE_STORAGE_CONNECTION_STRING` (its BlobEndpoint also names an emulator such
  as Azurite), else anonymous access to `https://ACCOUNT.blob.core.windows.net`;
  `MLP_AZURE_BLOB_ENDPOINT` overrides the endpoint.

The local runtime may also name an *artifact mirror*, a folder laid out as
`<mirror>/<bucket or container>/<key>`: a bucketed URI is looked up there first, which is
how the example `dev` environment runs offline.

Every download streams through one writer that hashes while it writes, so memory stays
constant whatever the artifact's size, and the SDK's own transfer path is used (the same
one its plain download uses). Fetched files land in a content-addressed cache
(`<cache>/sha256/<hex>/<basename>`) only after their digest matched, so a cache hit never
needs the network and a tampered or wrong artifact is never loaded. URIs are checked for
path traversal (`..`, percent-encoded dots, absolute keys) before anything touches the file
system.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import unquote

DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._+=@,-]+$")
AZURE_HOST = re.compile(r"^([a-z0-9]{3,24})\.blob\.core\.windows\.net$")
S3_ENDPOINT_ENV = "MLP_S3_ENDPOINT_URL"
GCS_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
AZURE_CONNECTION_ENV = "AZURE_STORAGE_CONNECTION_STRING"
AZURE_ENDPOINT_ENV = "MLP_AZURE_BLOB_ENDPOINT"
CHUNK = 1 << 20
BUCKETED = ("s3", "gs", "azure")


class ArtifactError(Exception):
    """An artifact could not be fetched or was refused; the message is one clear line."""


class DigestMismatch(ArtifactError):
    """The artifact's sha256 differs from the digest the spec declares."""


@dataclass(frozen=True)
class ParsedURI:
    scheme: str  # "file" | "s3" | "gs" | "azure" | "https"
    bucket: str  # s3/gs bucket, azure container; the host for https; "" for file
    key: str  # object key, or the absolute path for file
    account: str = ""  # azure storage account

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
        raise ArtifactError(f"{uri}: artifact uri needs a scheme (s3://, gs://, azure://, https:// or file:///)")
    if "?" in rest or "#" in rest:
        # A query string is where SAS tokens and signed-URL credentials travel: never in a spec.
        raise ArtifactError(f"{uri}: artifact uris take no query string or fragment (credentials go by reference)")
    if scheme == "file":
        if not rest.startswith("/"):
            raise ArtifactError(f"{uri}: file:// uris must be absolute (file:///path)")
        segments = rest.split("/")[1:]
        _check_segments(uri, segments)
        return ParsedURI("file", "", "/" + "/".join(segments))
    if scheme in ("s3", "gs"):
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise ArtifactError(f"{uri}: {scheme} uri needs a bucket and a key ({scheme}://bucket/key)")
        _check_segments(uri, [bucket, *key.split("/")])
        return ParsedURI(scheme, bucket, key)
    if scheme == "azure":
        account, _, path = rest.partition("/")
        return _azure(uri, account, path)
    if scheme == "https":
        host, _, path = rest.partition("/")
        if "@" in host:
            raise ArtifactError(f"{uri}: artifact uris embed no credentials (use the environment's storage secret)")
        match = AZURE_HOST.match(host)
        if match:
            return _azure(uri, match.group(1), path)
        if not host or not path:
            raise ArtifactError(f"{uri}: https uri needs a host and a path")
        _check_segments(uri, path.split("/"))
        return ParsedURI("https", host, path)
    raise ArtifactError(
        f"{uri}: unsupported artifact scheme {scheme!r} (use s3://, gs://, azure://, https:// or file:///)"
    )


def _azure(uri: str, account: str, path: str) -> ParsedURI:
    container, _, key = path.partition("/")
    if not account or not container or not key:
        raise ArtifactError(f"{uri}: azure uri needs an account, a container and a key (azure://ACCOUNT/CONTAINER/key)")
    _check_segments(uri, [account, container, *key.split("/")])
    return ParsedURI("azure", container, key, account)


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


class HashingWriter:
    """A write-only file object that hashes what passes through it on its way to disk.

    SDK transfer managers accept any object with `write`; giving them this one keeps the
    digest check inside their own download path instead of re-reading the file after. The
    hashing runs on a second thread (hashlib releases the GIL on large buffers), so it
    overlaps the network instead of adding to it; at most `window` bytes wait for it.
    Small writes (some SDKs stream in 8 KiB pieces) are gathered into blocks of `CHUNK`
    before they reach the file and the hash: one system call and one hand-over per block
    instead of one per piece.
    """

    def __init__(self, out: IO[bytes], window: int = 32 * CHUNK) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._parts: list[bytes] = []
        self._pending = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max(1, window // CHUNK))
        self._thread: threading.Thread | None = None
        self._digest: str | None = None
        self.size = 0

    def write(self, data: bytes) -> int:
        n = len(data)
        self.size += n
        # bytes are immutable and can be kept as they are; a caller may reuse any other buffer
        self._parts.append(data if type(data) is bytes else bytes(data))
        self._pending += n
        if self._pending >= CHUNK:
            self._emit()
        return n

    def _emit(self) -> None:
        block = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        self._pending = 0
        self._out.write(block)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlp-artifact-hash", daemon=True)
            self._thread.start()
        self._queue.put(block)

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:  # transfer managers write in order to a non-seekable sink
        return False

    def flush(self) -> None:
        if self._parts:
            self._emit()
        self._out.flush()

    def finish(self) -> str:
        """Write what is gathered, wait for the hashing thread and return the digest; safe to call more than once."""
        if self._digest is None:
            if self._parts:
                self._emit()
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
            self._digest = "sha256:" + self._hash.hexdigest()
        return self._digest

    @property
    def digest(self) -> str:
        return self.finish()


def _copy(src: IO[bytes], sink: HashingWriter) -> None:
    for chunk in iter(lambda: src.read(CHUNK), b""):
        sink.write(chunk)


class Backend(Protocol):
    """One storage service: stream an object into a sink, upload a file, list version folders."""

    def download(self, parsed: ParsedURI, uri: str, sink: HashingWriter) -> None: ...

    def upload(self, src: Path, parsed: ParsedURI) -> None: ...

    def folders(self, parsed: ParsedURI, prefix: str) -> Iterator[str]: ...


class _FileBackend:
    def download(self, parsed: ParsedURI, uri: str, sink: HashingWriter) -> None:
        path = Path(parsed.key)
        if not path.is_file():
            raise ArtifactError(f"{uri}: no such file")
        with open(path, "rb") as src:
            _copy(src, sink)

    def upload(self, src: Path, parsed: ParsedURI) -> None:
        out = Path(parsed.key)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)

    def folders(self, parsed: ParsedURI, prefix: str) -> Iterator[str]:
        folder = Path(prefix)
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir():
                    yield child.name


class _S3Backend:
    def __init__(self, endpoint_url: str | None) -> None:
        self.endpoint_url = endpoint_url
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            boto3 = _sdk("boto3", "s3")
            kwargs: dict[str, Any] = {}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            if not os.environ.get("AWS_DEFAULT_REGION") and not os.environ.get("AWS_REGION"):
                kwargs["region_name"] = "us-east-1"
            self._client = boto3.client("s3", **kwargs)
        return self._client

    def download(self, parsed: ParsedURI, uri: str, sink: HashingWriter) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().download_fileobj(parsed.bucket, parsed.key, sink)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            if code in ("404", "NoSuchKey"):
                code = "NoSuchKey"
            raise ArtifactError(f"{uri}: S3 get_object failed: {code}") from None
        except BotoCoreError as exc:
            raise ArtifactError(f"{uri}: S3 unreachable: {exc}") from None

    def upload(self, src: Path, parsed: ParsedURI) -> None:
        self.client().upload_file(str(src), parsed.bucket, parsed.key)

    def folders(self, parsed: ParsedURI, prefix: str) -> Iterator[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=parsed.bucket, Prefix=prefix, Delimiter="/")
        )
        for page in pages:
            for cp in page.get("CommonPrefixes", []):
                yield cp["Prefix"][len(prefix) :].strip("/")


class _GCSBackend:
    def __init__(self) -> None:
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            storage = _sdk("google.cloud.storage", "gcs")
            if os.environ.get(GCS_EMULATOR_ENV):
                from google.auth.credentials import AnonymousCredentials

                project = os.environ.get("GOOGLE_CLOUD_PROJECT", "mlp")
                self._client = storage.Client(project=project, credentials=AnonymousCredentials())
            else:
                self._client = storage.Client()
        return self._client

    def download(self, parsed: ParsedURI, uri: str, sink: HashingWriter) -> None:
        from google.api_core import exceptions as gexc

        blob = self.client().bucket(parsed.bucket).blob(parsed.key)
        try:
            # The sink's sha256 of the declared digest is the end-to-end check; the SDK's own
            # crc32c/md5 pass over the same bytes would only hash them a second time.
            blob.download_to_file(sink, checksum=None)
        except gexc.NotFound:
            raise ArtifactError(f"{uri}: GCS object not found") from None
        except gexc.GoogleAPICallError as exc:
            raise ArtifactError(f"{uri}: GCS download failed: {exc.code} {exc.message}") from None
        except OSError as exc:
            raise ArtifactError(f"{uri}: GCS unreachable: {exc}") from None

    def upload(self, src: Path, parsed: ParsedURI) -> None:
        self.client().bucket(parsed.bucket).blob(parsed.key).upload_from_filename(str(src))

    def folders(self, parsed: ParsedURI, prefix: str) -> Iterator[str]:
        listing = self.client().list_blobs(parsed.bucket, prefix=prefix, delimiter="/")
        for page in listing.pages:
            for folder in page.prefixes:
                yield folder[len(prefix) :].strip("/")


class _AzureBackend:
    def __init__(self) -> None:
        self._services: dict[str, Any] = {}

    def service(self, account: str) -> Any:
        if account not in self._services:
            blob = _sdk("azure.storage.blob", "azure")
            conn = os.environ.get(AZURE_CONNECTION_ENV)
            endpoint = os.environ.get(AZURE_ENDPOINT_ENV)
            if conn:
                service = blob.BlobServiceClient.from_connection_string(conn)
                if service.account_name != account:
                    raise ArtifactError(
                        f"azure account {account!r} differs from the one {AZURE_CONNECTION_ENV} names "
                        f"({service.account_name!r})"
                    )
            else:
                service = blob.BlobServiceClient(endpoint or f"https://{account}.blob.core.windows.net")
            self._services[account] = service
        return self._services[account]

    def download(self, parsed: ParsedURI, uri: str, sink: HashingWriter) -> None:
        from azure.core import exceptions as aexc

        client = self.service(parsed.account).get_blob_client(parsed.bucket, parsed.key)
        try:
            client.download_blob(max_concurrency=1).readinto(sink)
        except aexc.ResourceNotFoundError:
            raise ArtifactError(f"{uri}: Azure blob not found") from None
        except aexc.HttpResponseError as exc:
            raise ArtifactError(f"{uri}: Azure download failed: {exc.status_code} {exc.reason}") from None
        except aexc.AzureError as exc:
            raise ArtifactError(f"{uri}: Azure unreachable: {type(exc).__name__}") from None

    def upload(self, src: Path, parsed: ParsedURI) -> None:
        client = self.service(parsed.account).get_blob_client(parsed.bucket, parsed.key)
        with open(src, "rb") as data:
            client.upload_blob(data, overwrite=True)

    def folders(self, parsed: ParsedURI, prefix: str) -> Iterator[str]:
        container = self.service(parsed.account).get_container_client(parsed.bucket)
        for item in container.walk_blobs(name_starts_with=prefix, delimiter="/"):
            name = item.name
            if name.endswith("/"):
                yield name[len(prefix) :].strip("/")


class _HTTPSBackend:
    def download(self, parsed: ParsedURI, uri: str, sink: HashingWriter) -> None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri, timeout=60) as resp:  # scheme checked: https only
                _copy(resp, sink)
        except urllib.error.HTTPError as exc:
            raise ArtifactError(f"{uri}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ArtifactError(f"{uri}: unreachable: {exc}") from None

    def upload(self, src: Path, parsed: ParsedURI) -> None:
        raise ArtifactError(f"https://{parsed.bucket}/{parsed.key}: plain https is read-only; push to s3, gs or azure")

    def folders(self, parsed: ParsedURI, prefix: str) -> Iterator[str]:
        raise ArtifactError("plain https cannot be listed; push to s3, gs or azure")


_EXTRAS = {"s3": "serve", "gcs": "gcs", "azure": "azure"}


def _sdk(module: str, store: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ArtifactError(
            f"the {store} artifact store needs the {module.split('.')[0]} package: install mlp with its "
            f"'{_EXTRAS[store]}' extra"
        ) from None


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
        self._backends: dict[str, Backend] = {}

    def backend(self, scheme: str) -> Backend:
        if scheme not in self._backends:
            factories: dict[str, Any] = {
                "file": _FileBackend,
                "s3": lambda: _S3Backend(self.s3_endpoint_url),
                "gs": _GCSBackend,
                "azure": _AzureBackend,
                "https": _HTTPSBackend,
            }
            self._backends[scheme] = factories[scheme]()
        return self._backends[scheme]

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
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as out:
                sink = HashingWriter(out)
                try:
                    local = self._mirrored(parsed, uri)
                    if local is not None:
                        with open(local, "rb") as src:
                            _copy(src, sink)
                    else:
                        self.backend(parsed.scheme).download(parsed, uri, sink)
                finally:
                    sink.finish()  # the hashing thread ends whatever happened
            if sink.digest != f"sha256:{hexd}":
                raise DigestMismatch(
                    f"{uri}: sha256 mismatch: the spec declares sha256:{hexd[:12]}..., "
                    f"the artifact is {sink.digest[:19]}...; refusing to load it"
                )
            final = folder / parsed.basename
            os.replace(tmp_name, final)
            return final
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def _mirrored(self, parsed: ParsedURI, uri: str) -> Path | None:
        if self.mirror is None or parsed.scheme not in BUCKETED:
            return None
        local = self.mirror / parsed.bucket / parsed.key
        if not _within(self.mirror, local):
            raise ArtifactError(f"{uri}: key escapes the artifact mirror")
        return local if local.is_file() else None

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
        backend = self.backend(parsed.scheme)
        digest = sha256_file(src)
        ext = "".join(src.suffixes[-1:]) or ".bin"
        if version is None:
            base_key = parsed.key[: -len("/x")]
            prefix = (base_key + "/" if base_key else "") + model + "/"
            found = (int(name) for name in backend.folders(parsed, prefix) if name.isdigit())
            version = max(found, default=0) + 1
        uri = f"{dest}/{model}/{version}/model{ext}"
        backend.upload(src, parse_uri(uri))
        return uri, digest, version
