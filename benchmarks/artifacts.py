"""Artifact fetch through each cloud store's emulator: mlp's digest-checked fetch against the SDK's own download.

For S3 (moto's server), GCS (gcp-storage-emulator) and Azure Blob (Azurite) in turn, one
artifact of --size-mb is uploaded, then fetched --repeat times by each of two child processes
in alternation (A B A B ...):

  mlp   ArtifactStore.fetch(uri, digest): streamed, hashed while written, cached by digest
  sdk   the SDK's plain download to a file: boto3 download_file, google-cloud-storage
        download_to_filename, azure-storage-blob download_blob().readinto(file)

Each child times only the download (imports excluded) and reports its peak RSS; the table
gives medians and the median of the pairwise ratios mlp/sdk. Peak RSS is also taken at a
quarter of the size, to show that memory does not grow with the artifact.

    .venv/bin/python benchmarks/artifacts.py [--size-mb 200] [--repeat 5] [--stores s3,gcs,azure]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop an emulator and everything it started."""
    import signal

    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"emulator on port {port} did not start")


def _start(kind: str, tmp: Path) -> tuple[subprocess.Popen[bytes], dict[str, str], str]:
    """Start one emulator as its own process; return it, the env that points SDKs at it, and a URI prefix."""
    port = _free_port()
    bindir = Path(sys.executable).parent
    if kind == "s3":
        cmd = [str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        env = {"MLP_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench"}
        env |= {"AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        prefix = "s3://bench"
    elif kind == "gcs":
        cmd = [str(bindir / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
        env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "GOOGLE_CLOUD_PROJECT": "bench"}
        prefix = "gs://bench"
    else:
        binary = shutil.which("azurite-blob")
        if binary is None:
            raise SystemExit("azurite-blob not on PATH (npm install -g azurite)")
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        cmd = [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(tmp / "azurite")]
        cmd += ["--silent", "--skipApiVersionCheck", "--loose"]
        env = {
            "AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=http;AccountName=bench;AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port}/bench;",
            "AZURITE_ACCOUNTS": f"bench:{key}",
        }
        prefix = "azure://bench/bench"
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    _wait(port)
    return proc, env, prefix


def _container(kind: str) -> None:
    if kind == "s3":
        import boto3

        boto3.client("s3", endpoint_url=os.environ["MLP_S3_ENDPOINT_URL"]).create_bucket(Bucket="bench")
    elif kind == "gcs":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        storage.Client(project="bench", credentials=AnonymousCredentials()).create_bucket("bench")
    else:
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"]).create_container(
            "bench"
        )


def _sdk_download(kind: str, uri: str, out: Path) -> None:
    from mlp.serving.artifacts import parse_uri

    parsed = parse_uri(uri)
    if kind == "s3":
        import boto3

        client = boto3.client("s3", endpoint_url=os.environ["MLP_S3_ENDPOINT_URL"])
        client.download_file(parsed.bucket, parsed.key, str(out))
    elif kind == "gcs":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="bench", credentials=AnonymousCredentials())
        client.bucket(parsed.bucket).blob(parsed.key).download_to_filename(str(out))
    else:
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
        with open(out, "wb") as fh:
            service.get_blob_client(parsed.bucket, parsed.key).download_blob().readinto(fh)


def child(kind: str, mode: str, uri: str, digest: str, work: str) -> None:
    """One measured download in a fresh process: prints seconds and peak RSS as JSON."""
    import importlib

    from mlp.serving.artifacts import ArtifactStore

    # Both sides import the SDK before the clock starts; both build their client inside it.
    importlib.import_module({"s3": "boto3", "gcs": "google.cloud.storage", "azure": "azure.storage.blob"}[kind])
    if mode == "sdk":
        start = time.perf_counter()
        _sdk_download(kind, uri, Path(work) / "plain.bin")
    else:
        store = ArtifactStore(Path(work) / "cache")
        start = time.perf_counter()
        store.fetch(uri, digest)
    seconds = time.perf_counter() - start
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mib": rss_mib}))


def _run(kind: str, mode: str, uri: str, digest: str, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, mode, uri, digest, work],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stores", default="s3,gcs,azure")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlp.serving.artifacts import ArtifactStore, sha256_file

    rows = []
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        sizes = {"full": args.size_mb, "quarter": max(1, args.size_mb // 4)}
        files = {}
        for label, mb in sizes.items():
            path = tmp / f"{label}.bin"
            with open(path, "wb") as fh:
                for _ in range(mb):
                    fh.write(os.urandom(1 << 20))
            files[label] = (path, sha256_file(path))
        for kind in args.stores.split(","):
            proc, env, prefix = _start(kind, tmp)
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                _container(kind)
                store = ArtifactStore(tmp / "push-cache")
                uris = {}
                for label, (path, digest) in files.items():
                    uri, _, _ = store.push(path, f"{prefix}/{label}", "bench", 1)
                    uris[label] = (uri, digest)
                print(f"{kind}: uploaded; timing {args.repeat} pairs", file=sys.stderr)
                uri, digest = uris["full"]
                _run(kind, "mlp", uri, digest, env)  # warm-up: the emulator's first read
                mlp_runs, sdk_runs = [], []
                for i in range(args.repeat):
                    mlp_runs.append(_run(kind, "mlp", uri, digest, env))
                    sdk_runs.append(_run(kind, "sdk", uri, digest, env))
                    print(
                        f"  pair {i + 1}: mlp {mlp_runs[-1]['seconds']:.2f}s sdk {sdk_runs[-1]['seconds']:.2f}s",
                        file=sys.stderr,
                    )
                quarter = _run(kind, "mlp", *uris["quarter"], env)
                ratios = [m["seconds"] / s["seconds"] for m, s in zip(mlp_runs, sdk_runs, strict=True)]
                rows.append(
                    {
                        "store": kind,
                        "mlp_s": statistics.median(r["seconds"] for r in mlp_runs),
                        "sdk_s": statistics.median(r["seconds"] for r in sdk_runs),
                        "ratio": statistics.median(ratios),
                        "ratio_min": min(ratios),
                        "ratio_max": max(ratios),
                        "mlp_rss": statistics.median(r["rss_mib"] for r in mlp_runs),
                        "sdk_rss": statistics.median(r["rss_mib"] for r in sdk_runs),
                        "mlp_rss_quarter": quarter["rss_mib"],
                    }
                )
            finally:
                _end(proc)
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
    print(f"\nartifact of {args.size_mb} MiB, {args.repeat} pairs, medians")
    print(
        f"{'store':<6} {'mlp s':>7} {'sdk s':>7} {'mlp/sdk':>8} {'(min-max)':>13} {'mlp RSS':>9} {'sdk RSS':>9} {'mlp RSS @1/4':>13}"
    )
    for r in rows:
        print(
            f"{r['store']:<6} {r['mlp_s']:>7.2f} {r['sdk_s']:>7.2f} {r['ratio']:>8.2f} "
            f"{r['ratio_min']:>6.2f}-{r['ratio_max']:<6.2f} {r['mlp_rss']:>7.0f}Mi {r['sdk_rss']:>7.0f}Mi "
            f"{r['mlp_rss_quarter']:>11.0f}Mi"
        )


if __name__ == "__main__":
    main()
