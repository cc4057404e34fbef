"""Benchmark: the platform API under a steady 200 requests/s, against FastAPI's hello world.

A platform repository with 10,000 models (100 files of 100) and a state folder with
1,000+ audit events; `mlp server` runs as its own process (the same uvicorn settings as
production: httptools, bounded heads, TLS off) and every request is authenticated with an API
token (a SQLite lookup and a SHA-256 per request) or an Ory Kratos session (the stand-in the
tests use, asked once per session per 30 s: the identity cache) and checked against the Team specs.
An open-loop client sends at a fixed rate (latency counted from the scheduled send time,
so a stall is not hidden by the client waiting) to each route in turn, in rounds (so that
whatever else loads a shared machine falls on every route and the baseline alike):

- `GET /api/v1/models` (a page of 100 of the 10,000 models, RBAC-filtered);
- `GET /api/v1/models?prefix=m09&limit=50` (a filtered page);
- `GET /api/v1/models` with a Kratos session token instead of an API token;
- `GET /api/v1/audit?limit=1000` (a 1,000-event audit page, newest first, with hashes);
- the same while 10 events/s are appended to the trail (each append makes the next request
  read and render the page again);

and, in the same run, the same client against a FastAPI app with one hello-world route
served by the same uvicorn configuration (the floor). p50 / p99 / max and the ratio of
p99 to hello world's p99 are printed, with the server's CPU time per request (user+system
from /proc: what a request costs, whatever else loads the machine) and the client's own
share of a core (near 100% the client, not the server, would set the tail).

    .venv/bin/python benchmarks/api.py                       # 10,000 models, 200 req/s, 15 s per route
    .venv/bin/python benchmarks/api.py --models 500 --seconds 3   # quick check
    .venv/bin/python benchmarks/api.py --saturate            # and each route's capacity (wrk)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELLO = """
import sys
from fastapi import FastAPI
import uvicorn
from mlp.api.server import Listener, uvicorn_config

app = FastAPI()

@app.get("/hello")
async def root():  # FastAPI's own first example ("First Steps"), word for word but the path
    return {"message": "Hello World"}

server = uvicorn.Server(uvicorn_config(app, Listener(port=0)))
original = server.startup

async def startup(sockets=None):
    await original(sockets=sockets)
    print(f"listening on http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/", file=sys.stderr, flush=True)

server.startup = startup
server.run()
"""

MODEL = """apiVersion: mlp.dev/v1
kind: Model
metadata: {{name: {name}, team: {team}}}
spec:
  framework: sklearn
  signature:
    inputs: [{{name: x, type: float}}]
    outputs: [{{name: y, type: int}}]
  versions:
    - version: 1
      uri: s3://models/{name}/1/model.joblib
      digest: sha256:{digest}
      metrics: {{accuracy: 0.9}}
      lineage: {{run: r1, dataset: d1}}
"""


def make_repo(folder: Path, models: int) -> Path:
    repo = folder / "repo"
    (repo / "specs" / "models").mkdir(parents=True)
    (repo / "specs" / "teams").mkdir(parents=True)
    (repo / "environments").mkdir()
    (repo / "specs" / "teams" / "teams.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Team\nmetadata: {name: growth}\nspec:\n  members: [{user: a, role: viewer}]\n"
        "---\napiVersion: mlp.dev/v1\nkind: Team\nmetadata: {name: risk}\nspec:\n  members: [{user: b}]\n"
    )
    per_file = 100
    for start in range(0, models, per_file):
        docs = [
            MODEL.format(name=f"m{i:05d}", team="growth" if i % 2 else "risk", digest=f"{i:064x}")
            for i in range(start, min(models, start + per_file))
        ]
        (repo / "specs" / "models" / f"batch-{start // per_file:04d}.yaml").write_text("---\n".join(docs))
    (repo / "environments" / "dev.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Environment\nmetadata: {name: dev, team: growth}\n"
        "spec:\n  target: {kind: local}\n  deployments:\n    m00001: {version: 1}\n"
    )
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@x"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return repo


def start(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    handle = log.open("wb")
    proc = subprocess.Popen([sys.executable, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://[\d.]+:\d+)", log.read_text())
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One HTTP/1.1 keep-alive request; returns the status (bodies carry Content-Length)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_rate(
    url: str, headers: dict[str, str], rate: float, seconds: float, connections: int = 32
) -> dict[str, Any]:
    """Open loop: request i is due at t0 + i/rate; a pool of keep-alive connections sends them.

    A minimal HTTP/1.1 client on asyncio streams: a general-purpose client's own CPU cost
    (and its pool bookkeeping under thousands of queued requests) would be measured instead
    of the server's.
    """
    target = httpx.URL(url)
    path = target.raw_path.decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    # perf_counter, not loop.time(): uvloop's clock is libuv's, cached per loop iteration in whole milliseconds
    now = time.perf_counter
    t0 = now() + 0.2
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            while next_index < total:
                i = next_index
                next_index += 1
                scheduled = t0 + i / rate
                delay = scheduled - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    ok = await _get(reader, writer, request) == 200
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(target.host, target.port)
                latencies.append((now() - scheduled) * 1000)
                errors += not ok
        finally:
            writer.close()

    client_cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return {
        "latencies": latencies,
        "n": total,
        "errors": errors,
        "elapsed": now() - t0,  # from the first request's due time to the last answer
        "client_cpu": time.process_time() - client_cpu,
    }


def summarise(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One route's figures over its slices (the rounds)."""
    latencies = sorted(x for s in slices for x in s["latencies"])
    elapsed = sum(s["elapsed"] for s in slices)
    n = sum(s["n"] for s in slices)
    return {
        "n": n,
        "rate": n / elapsed,
        "errors": sum(s["errors"] for s in slices),
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        "max": latencies[-1],
        # the generator's own share of a core: near 100% it, not the server, would set the tail
        "client_busy": sum(s["client_cpu"] for s in slices) / elapsed,
    }


def append_events(state: Path, per_second: float, stop: threading.Event) -> None:
    """What a busy controller does to the audit trail while it is read."""
    from mlp.controller.store import AuditEvent, AuditLog

    log = AuditLog(state)
    try:
        i = 0
        while not stop.wait(1 / per_second):
            log.append(AuditEvent("dev", "apply", "succeeded", author="ctl", message=f"during the run {i}"))
            i += 1
    finally:
        log.close()


def saturate(url: str, headers: dict[str, str], seconds: float) -> float | None:
    """Requests/s the route answers with 32 connections kept busy (wrk: a C client, one thread,
    so that the client's own CPU takes as little of the shared machine as possible)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    cmd = [wrk, "-t1", "-c32", f"-d{max(1, int(seconds))}s", *(f"-H{k}: {v}" for k, v in headers.items()), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    return float(match.group(1)) if match else None


def run(coroutine: Any) -> Any:
    """The client on uvloop when it is installed (uvicorn's own event loop): less of its CPU per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): what a request costs the server, whatever the load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_200)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=15.0, help="per route, over all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="each route runs seconds/rounds at a time, in turn")
    parser.add_argument("--appends", type=float, default=10.0, help="audit events appended per second (last route)")
    parser.add_argument(
        "--saturate",
        action="store_true",
        help="also drive each route as fast as it answers with wrk (if installed): the capacity behind the p99",
    )
    opts = parser.parse_args()

    from mlp.api.identity import TokenStore
    from mlp.controller.store import AuditEvent, AuditLog
    from tests.standins.github_api import serve
    from tests.standins.kratos import KratosStandIn

    with tempfile.TemporaryDirectory(prefix="mlp-bench-api-") as tmp:
        folder = Path(tmp)
        print(f"repository with {opts.models} models, {opts.events} audit events ...", file=sys.stderr)
        repo = make_repo(folder, opts.models)
        state = folder / "state"
        log = AuditLog(state)
        for i in range(opts.events):
            log.append(AuditEvent("dev", "apply", "succeeded", revision=f"{i:040x}", author="ctl",
                                  objects=[f"UPDATE ModelDeployment/dev/m{i % 100:05d}"], message=f"event {i}"))  # fmt: skip
        log.close()
        token, _ = TokenStore(state).create("growth", "admin", expires_in=3600)
        auth = {"Authorization": f"Bearer {token}"}
        kratos = KratosStandIn()
        session_token, _ = kratos.add_session("a@example.com", username="a")  # a viewer in team growth
        session = {"X-Session-Token": session_token}

        stack = contextlib.ExitStack()
        kratos_url = stack.enter_context(serve(kratos.app))
        hello, hello_url = start(["-c", HELLO], folder / "hello.log")
        server, api_url = start(
            ["-m", "mlp.cli.main", "server", "--repo", str(repo), "--state-dir", str(state), "--port", "0",
             "--kratos-url", kratos_url],
            folder / "server.log",
        )  # fmt: skip
        try:
            began = time.monotonic()
            first = httpx.get(f"{api_url}/api/v1/models", headers=auth, timeout=600)
            assert first.status_code == 200, first.text
            load = time.monotonic() - began
            page = first.json()
            assert len(page["items"]) == 100 and page["nextCursor"], "expected a full first page"
            audit = httpx.get(f"{api_url}/api/v1/audit?limit=1000", headers=auth, timeout=60).json()
            assert len(audit["items"]) == 1000
            routes = [
                ("FastAPI hello world (baseline)", f"{hello_url}/hello", {}),
                ("GET /api/v1/models (page of 100 of N)", f"{api_url}/api/v1/models", auth),
                ("GET /api/v1/models?prefix=m09&limit=50", f"{api_url}/api/v1/models?prefix=m09&limit=50", auth),
                ("GET /api/v1/models, Kratos session", f"{api_url}/api/v1/models", session),
                ("GET /api/v1/audit?limit=1000", f"{api_url}/api/v1/audit?limit=1000", auth),
                # the trail is not still in production: the page must be read again after each append
                (
                    f"GET /api/v1/audit?limit=1000, {opts.appends:g} appends/s",
                    f"{api_url}/api/v1/audit?limit=1000",
                    auth,
                ),
            ]
            # Rounds: each route runs `seconds / rounds` per round, in turn, so that what else loads the
            # shared machine meanwhile falls on every route alike (the baseline included).
            slices: list[list[dict[str, Any]]] = [[] for _ in routes]
            cpu = [0.0 for _ in routes]
            for _name, url, headers in routes:
                run(run_rate(url, headers, opts.rate, 1.0))  # warm up the route
            for _ in range(opts.rounds):
                for i, (name, url, headers) in enumerate(routes):
                    proc = hello if i == 0 else server
                    stop = threading.Event()
                    writer = threading.Thread(target=append_events, args=(state, opts.appends, stop), daemon=True)
                    if "appends/s" in name:
                        writer.start()
                    before = cpu_seconds(proc.pid)
                    slices[i].append(run(run_rate(url, headers, opts.rate, opts.seconds / opts.rounds)))
                    cpu[i] += cpu_seconds(proc.pid) - before
                    stop.set()
                    if writer.is_alive():
                        writer.join()
            results = []
            for i, (name, url, headers) in enumerate(routes):
                result = summarise(slices[i])
                result["cpu_ms"] = cpu[i] * 1000 / result["n"]
                if opts.saturate:
                    result["saturated"] = saturate(url, headers, opts.seconds)
                results.append((name, result))
        finally:
            for proc in (server, hello):
                proc.terminate()
                proc.wait(timeout=20)
            stack.close()
        base = results[0][1]["p99"]
        base_cpu = results[0][1]["cpu_ms"]
        print(f"\nmodels: {opts.models}, audit events: {opts.events}, rate: {opts.rate:.0f}/s for {opts.seconds:.0f} s"
              f" per route in {opts.rounds} rounds; first request (loads the {opts.models:,} specs from Git): {load:.1f} s\n")  # fmt: skip
        print(
            "| route | requests | achieved req/s | errors | p50 ms | p99 ms | max ms | p99 / hello p99"
            " | server CPU ms/request | CPU / hello CPU | client busy |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in results:
            print(f"| {name} | {r['n']} | {r['rate']:.0f} | {r['errors']} | {r['p50']:.1f} | {r['p99']:.1f} |"
                  f" {r['max']:.1f} | {r['p99'] / base:.1f}x | {r['cpu_ms']:.2f} | {r['cpu_ms'] / base_cpu:.1f}x |"
                  f" {r['client_busy']:.0%} |")  # fmt: skip
        if opts.saturate:
            print("\n| route | saturated req/s (wrk, 32 connections) | headroom over the paced rate |")
            print("|---|---|---|")
            for name, r in results:
                sat = r.get("saturated")
                print(f"| {name} | {sat:.0f} | {sat / opts.rate:.1f}x |" if sat else f"| {name} | (no wrk) | |")


if __name__ == "__main__":
    main()
