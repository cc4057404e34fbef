"""Payload log at 10,000 requests/s for 60 s, sample rate 1.0: how many records are dropped?

The data plane (`mlp.serving`: iris LogisticRegression, canary 90/10 over two loaded
versions, micro-batching, metrics, payload log at sample rate 1.0 on every request) runs
in its own process; `benchmarks/serve.py`'s open-loop load generator (wrk2-style pacing,
latency from the scheduled send time) drives it at a fixed rate. Two configurations in
the same run, interleaved when `--rounds` > 1:

  current   the payload log as shipped (per-version queue bound 200,000, early drain)
  baseline  the same code with the previous bound (10,000 records per version)

For each: requests answered 200, p50/p99, `mlp_payload_log_dropped_total` read from the
server's /metrics at the end of the window, and the rows found in the Parquet files after
a clean shutdown (the log flushes on exit), which must equal every 200 the server sent.

    .venv/bin/python benchmarks/payload_log.py                       # 10,000/s, 60 s, both configurations
    .venv/bin/python benchmarks/payload_log.py --rate 13000 --duration 30
    .venv/bin/python benchmarks/payload_log.py --component   # the log alone, paced, beside a GIL-bound thread

`--component` measures the payload log by itself, in one process: a thread paces `put()` at
`--rate` per second while another thread runs pure-Python work the whole time (standing in
for the event loop that competes with the writer for the GIL), for the same two bounds.
Use it when the machine cannot drive the whole data plane at the rate.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as bench

CONFIGS = {"current": 200_000, "baseline": 10_000}


def _serve(port: int, model_dir: str, state: str, max_queue: int) -> None:
    from mlp.serving.app import DataPlane
    from mlp.serving.artifacts import sha256_file
    from mlp.serving.runtime import Runtime
    from mlp.serving.server import bind, serve
    from mlp.serving.testing import deployment, route

    m1, m2 = Path(model_dir) / "1" / "model.joblib", Path(model_dir) / "2" / "model.joblib"
    rt = Runtime(state, payload_log=True)
    assert rt.payloads is not None
    rt.payloads.max_queue = max_queue
    rt.apply(
        deployment(
            "iris",
            [route(1, m1, sha256_file(m1), "stable", 90), route(2, m2, sha256_file(m2), "canary", 10)],
            payload_rate=1.0,
            batching={"maxBatchSize": 32, "maxLatencyMs": 1.0},
        )
    )
    try:
        serve(DataPlane(rt), bind("127.0.0.1", port))
    finally:
        rt.close()


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet") if not p.name.startswith("."))


def run(config: str, model_dir: Path, body_file: str, rate: float, duration: float, conns: int) -> dict[str, Any]:
    port = bench._free_port()
    state = Path(tempfile.mkdtemp(prefix="mlp-bench-payload-"))
    proc = subprocess.Popen(
        [sys.executable, __file__, "_serve", str(port), str(model_dir), str(state), str(CONFIGS[config])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        result = bench._run_load(port, "/v1/models/iris:predict", body_file, conns, duration, 2.0, rate)
        result["dropped"] = _metric(port, "mlp_payload_log_dropped_total")
        result["answered_200"] = _metric(port, "mlp_model_requests_total")
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        result["rows"] = _rows(state / "payloads")
        result["config"] = config
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(state, ignore_errors=True)


def component(config: str, rate: float, duration: float) -> dict[str, Any]:
    import threading

    import numpy as np

    from mlp.serving.payload_log import PayloadLog

    names = ("sepal_length", "sepal_width", "petal_length", "petal_width")
    with tempfile.TemporaryDirectory() as tmp:
        log = PayloadLog(tmp, max_queue=CONFIGS[config])
        stop = threading.Event()

        def busy() -> None:
            while not stop.is_set():
                sum(range(10_000))

        competitor = threading.Thread(target=busy, daemon=True)
        competitor.start()
        x, y = np.ones((1, 4)), np.ones(1)
        sent = 0
        start = time.perf_counter()
        late = 0.0
        while (now := time.perf_counter() - start) < duration:
            due = int(now * rate)
            late = max(late, (due - sent) / rate)
            while sent < due:
                log.put("iris", "1", x, y, names, ("species",))
                sent += 1
            time.sleep(0.001)
        stop.set()
        log.flush(timeout=60)
        log.close()
        return {
            "config": config,
            "sent": sent,
            "rate": sent / duration,
            "dropped": log.dropped,
            "rows": log.written_rows,
            "max_lag_s": late,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=list(CONFIGS))
    ap.add_argument("--component", action="store_true", help="measure the payload log alone (see above)")
    args = ap.parse_args()
    if args.component:
        print(
            f"\npayload log alone: put() paced at {args.rate:,.0f}/s for {args.duration:.0f} s beside a GIL-bound thread\n"
        )
        print("| config | queue bound | records put | per second | dropped | rows written |")
        print("|---|---:|---:|---:|---:|---:|")
        for _ in range(args.rounds):
            for config in args.only:
                r = component(config, args.rate, args.duration)
                print(
                    f"| {config} | {CONFIGS[config]:,} | {r['sent']:,} | {r['rate']:,.0f} | {r['dropped']:,}"
                    f" | {r['rows']:,} |",
                    flush=True,
                )
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        bench._train(model_dir)
        body_file = str(Path(tmp) / "v1.json")
        Path(body_file).write_bytes(bench.V1_BODY)
        results = []
        for _ in range(args.rounds):
            for config in args.only:
                r = run(config, model_dir, body_file, args.rate, args.duration, args.conns)
                print(json.dumps(r), file=sys.stderr)
                results.append(r)
    print(f"\nopen loop at {args.rate:,.0f} requests/s for {args.duration:.0f} s, payload log sample rate 1.0\n")
    print(
        "| config | queue bound | requests/s (200) | p50 ms | p99 ms | non-200 | answered (whole run)"
        " | dropped | rows written |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        non200 = sum(v for k, v in r["codes"].items() if k != "200")
        print(
            f"| {r['config']} | {CONFIGS[r['config']]:,} | {r['ok_rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}"
            f" | {non200} | {r['answered_200']:,.0f} | {r['dropped']:,.0f} | {r['rows']:,} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        _serve(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
