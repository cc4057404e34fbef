"""Benchmark: the webhook receiver under 1,000 deliveries in 10 s on loopback.

The receiver runs in its own process (uvicorn, as `mlp webhooks` runs it) with a
handler that records every event it processes (2 ms of simulated work each, on the
background workers). The load generator, in this process, sends real fixture payloads
(GitHub push / pull_request / pull_request_review, GitLab push / merge request),
each signed, at a fixed rate (open loop: a slow answer does not slow the sender);
10% are redeliveries of an earlier delivery (same id, same body).

Checked: every delivery answered 2xx, none lost (every unique delivery processed),
duplicates processed once, and the receiver's latency percentiles. Baseline, in the
same run: the same server stack with an endpoint that answers 202 and does nothing
(no signature, no dedupe, no SQLite), so the table shows what the receiver's own work costs.

    .venv/bin/python benchmarks/webhooks.py                     # 1,000 deliveries at 100/s
    .venv/bin/python benchmarks/webhooks.py --deliveries 1000 --rate 100 --burst
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SECRET = b"bench-secret"
TOKEN = "bench-token"


# --- server side (runs in a child process) ------------------------------------------------


def serve(mode: str, state_dir: Path) -> None:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from mlp.webhooks.events import Event
    from mlp.webhooks.receiver import ReceiverConfig, WebhookReceiver
    from mlp.webhooks.store import DeliveryStore

    processed: list[str] = []
    lock = threading.Lock()

    def handler(event: Event) -> None:
        time.sleep(0.002)  # stand-in for real work; it runs on the workers, off the request path
        key = getattr(event, "after", "") or f"{getattr(event, 'number', '')}:{getattr(event, 'head_sha', '')}"
        with lock:
            processed.append(key)

    if mode == "baseline":
        app = FastAPI()

        @app.post("/webhooks/github")
        @app.post("/webhooks/gitlab")
        async def noop() -> JSONResponse:
            return JSONResponse({"status": "queued"}, status_code=202)

        @app.get("/bench/processed")
        def none() -> dict[str, Any]:
            return {"processed": [], "idle": True}

    else:
        rx = WebhookReceiver(
            ReceiverConfig(github_secret=SECRET, gitlab_token=TOKEN),
            handler,
            DeliveryStore(state_dir / "deliveries.db"),
            workers=2,
        )
        rx.start()
        app = rx.app

        @app.get("/bench/processed")
        def report() -> dict[str, Any]:
            idle = rx.drain(0.01)
            with lock:
                return {"processed": list(processed), "idle": idle, "stats": rx.stats.__dict__}

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


# --- load side ------------------------------------------------------------------------------


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    key: str  # what the handler records for it
    duplicate: bool = False


def _load(provider: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / provider / name).read_text())


def make_deliveries(n: int, dup_share: float) -> list[Delivery]:
    """Unique signed deliveries from the real fixtures, with redeliveries mixed in."""
    templates = [
        ("github", "push", _load("github", "push.json")),
        ("github", "pull_request", _load("github", "pull_request.synchronize.json")),
        ("github", "pull_request_review", _load("github", "pull_request_review.submitted.approved.json")),
        ("gitlab", "Push Hook", _load("gitlab", "push.json")),
        ("gitlab", "Merge Request Hook", _load("gitlab", "merge_request.open.json")),
    ]
    unique = n - int(n * dup_share)
    out: list[Delivery] = []
    for i in range(unique):
        provider, event, template = templates[i % len(templates)]
        payload = copy.deepcopy(template)
        sha = hashlib.sha1(f"{i}".encode()).hexdigest()
        if event in ("push", "Push Hook"):
            payload["after"] = sha
            key = sha
        elif provider == "github":
            payload["pull_request"]["number"] = i + 1
            payload["pull_request"]["head"]["sha"] = sha
            key = f"{i + 1}:{sha}"
        else:
            payload["object_attributes"]["iid"] = i + 1
            payload["object_attributes"]["last_commit"]["id"] = sha
            key = f"{i + 1}:{sha}"
        body = json.dumps(payload).encode()
        delivery_id = str(uuid.uuid4())
        if provider == "github":
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery_id,
                "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest(),
            }
        else:
            headers = {
                "Content-Type": "application/json",
                "X-Gitlab-Event": event,
                "X-Gitlab-Token": TOKEN,
                "Idempotency-Key": delivery_id,
                "X-Gitlab-Event-UUID": delivery_id,
            }
        out.append(Delivery(f"/webhooks/{provider}", headers, body, key))
    # Redeliveries: copies of earlier deliveries, spread through the run.
    step = max(1, unique // max(1, n - unique))
    for j in range(n - unique):
        original = out[(j * step) % unique]
        position = min(len(out), (j * step) % unique + 1 + j * step // 3)
        out.insert(position, Delivery(original.path, original.headers, original.body, original.key, True))
    return out


async def fire(url: str, deliveries: list[Delivery], rate: float | None) -> list[tuple[float, int, str]]:
    """Send at `rate` per second (None: as fast as 32 connections allow); (latency s, status, body status)."""
    import httpx

    results: list[tuple[float, int, str]] = [(0.0, 0, "")] * len(deliveries)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        # Warm the connection pool so the first requests do not pay for TCP set-up.
        await asyncio.gather(*(client.get("/bench/processed") for _ in range(8)))
        sem = asyncio.Semaphore(32)

        async def one(i: int, d: Delivery, at: float) -> None:
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with sem:
                start = time.perf_counter()
                r = await client.post(d.path, content=d.body, headers=d.headers)
                results[i] = (time.perf_counter() - start, r.status_code, r.json().get("status", ""))

        t0 = time.perf_counter() + 0.05
        await asyncio.gather(*(one(i, d, t0 + (i / rate if rate else 0)) for i, d in enumerate(deliveries)))
    return results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run(mode: str, deliveries: list[Delivery], rate: float | None) -> dict[str, Any]:
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode, "--state-dir", tmp],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    httpx.get(f"{url}/bench/processed", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            started = time.perf_counter()
            results = asyncio.run(fire(url, deliveries, rate))
            sent_in = time.perf_counter() - started
            report: dict[str, Any] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                report = httpx.get(f"{url}/bench/processed", timeout=5).json()
                if report["idle"]:
                    break
                time.sleep(0.1)
            done_in = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(10)
    latencies = [r[0] * 1000 for r in results]
    return {
        "mode": mode,
        "rate": rate,
        "results": results,
        "sent_in": sent_in,
        "done_in": done_in,
        "processed": report.get("processed", []),
        "p50": pct(latencies, 50),
        "p95": pct(latencies, 95),
        "p99": pct(latencies, 99),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
    }


def check(run_: dict[str, Any], deliveries: list[Delivery]) -> list[str]:
    """Problems: non-2xx answers, lost deliveries, duplicates processed twice."""
    problems = []
    statuses = [r[1] for r in run_["results"]]
    bad = [s for s in statuses if not 200 <= s < 300]
    if bad:
        problems.append(f"{len(bad)} non-2xx answers: {sorted(set(bad))}")
    if run_["mode"] == "baseline":
        return problems
    expected = sorted({d.key for d in deliveries})
    processed = run_["processed"]
    lost = set(expected) - set(processed)
    twice = len(processed) - len(set(processed))
    if lost:
        problems.append(f"{len(lost)} deliveries lost")
    if twice:
        problems.append(f"{twice} deliveries processed more than once")
    dup_answers = sum(1 for r in run_["results"] if r[2] == "duplicate")
    if dup_answers != sum(d.duplicate for d in deliveries):
        problems.append(f"{dup_answers} answered duplicate, expected {sum(d.duplicate for d in deliveries)}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=["receiver", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="deliveries per second (default 100: 1,000 in 10 s)")
    parser.add_argument("--duplicates", type=float, default=0.10, help="share of redeliveries")
    parser.add_argument("--burst", action="store_true", help="also send everything at once (32 connections)")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.state_dir)
        return
    if not FIXTURES.is_dir():
        sys.exit(f"error: fixtures not found at {FIXTURES}")
    deliveries = make_deliveries(args.deliveries, args.duplicates)
    unique = len({d.key for d in deliveries})
    print(
        f"{len(deliveries)} deliveries ({unique} unique, {len(deliveries) - unique} redeliveries), "
        f"{statistics.fmean(len(d.body) for d in deliveries) / 1024:.1f} KiB average body",
        file=sys.stderr,
    )
    runs = [
        ("baseline (no-op endpoint)", run("baseline", deliveries, args.rate)),
        ("receiver", run("receiver", deliveries, args.rate)),
    ]
    if args.burst:
        runs.append(("receiver, burst", run("receiver", deliveries, None)))
    header = (
        f"| {'run':<26} | {'rate/s':>6} | {'sent in s':>9} | {'all done s':>10} | {'p50 ms':>6} | {'p95 ms':>6} | "
        f"{'p99 ms':>6} | {'max ms':>6} | {'processed':>9} | result |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    failed = False
    for label, r in runs:
        problems = check(r, deliveries)
        if r["mode"] == "receiver" and r["rate"] and r["p99"] >= 50:
            problems.append(f"p99 {r['p99']:.1f} ms >= 50 ms")
        failed |= bool(problems)
        processed = "-" if r["mode"] == "baseline" else f"{len(r['processed'])}/{unique}"
        rate = f"{r['rate']:.0f}" if r["rate"] else "max"
        print(
            f"| {label:<26} | {rate:>6} | {r['sent_in']:>9.2f} | {r['done_in']:>10.2f} | {r['p50']:>6.1f} | "
            f"{r['p95']:>6.1f} | {r['p99']:>6.1f} | {r['max']:>6.1f} | {processed:>9} | "
            f"{'ok' if not problems else '; '.join(problems)} |"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
